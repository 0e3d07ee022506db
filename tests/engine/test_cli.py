"""Bad input to `python -m engine generate`: one clear line on stderr, a non-zero exit, no traceback."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def generate(*args: str, model: Path | str | None = None, output: Path | str = "out.png"):
    cmd = [sys.executable, "-m", "engine", "generate", "--prompt", "a fox", "--width", "64",
           "--height", "64", "--steps", "1", "--seed", "1", "--output", str(output), "--device",
           "cpu"]
    if model is not None:
        cmd += ["--model", str(model)]
    return subprocess.run(cmd + list(args), cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_clean_failure(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("args,words", [
    (["--width", "100"], ["width 100", "multiple of 16"]),
    (["--height", "4096"], ["height 4096"]),
    (["--steps", "0"], ["steps 0", "1..50"]),
    (["--steps", "51"], ["steps 51"]),
    (["--dtype", "float16"], ["float16", "bfloat16"]),
    (["--num-images", "9"], ["num_images 9"]),
])
def test_bad_parameters(tiny_model_dir, tmp_path, args, words):
    assert_clean_failure(generate(*args, model=tiny_model_dir, output=tmp_path / "o.png"), *words)


def test_unwritable_output(tiny_model_dir, tmp_path):
    r = generate(model=tiny_model_dir, output=tmp_path / "no-such-dir" / "o.png")
    assert_clean_failure(r, "does not exist")


def test_folder_missing_files(tiny_model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    assert_clean_failure(generate(model=broken, output=tmp_path / "o.png"), "vae")


def test_truncated_safetensors(tiny_model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    f = broken / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_clean_failure(generate(model=broken, output=tmp_path / "o.png"),
                         "diffusion_pytorch_model.safetensors")


def test_wrong_model_type(tiny_model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (broken / "model_index.json").write_text(json.dumps(index))
    assert_clean_failure(generate(model=broken, output=tmp_path / "o.png"),
                         "StableDiffusionXLPipeline", "not Z-Image")


def test_weights_of_another_shape(tiny_model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    cfg = json.loads((broken / "transformer" / "config.json").read_text())
    cfg["n_layers"] += 1  # the config promises a layer the files do not have
    (broken / "transformer" / "config.json").write_text(json.dumps(cfg))
    assert_clean_failure(generate(model=broken, output=tmp_path / "o.png"), "layers.")


def test_impossible_config(tiny_model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    cfg = json.loads((broken / "transformer" / "config.json").read_text())
    cfg["dim"] *= 2  # heads no longer match the RoPE axes
    (broken / "transformer" / "config.json").write_text(json.dumps(cfg))
    assert_clean_failure(generate(model=broken, output=tmp_path / "o.png"), "config.json")


def test_offline_repo_id_says_what_to_do(tmp_path):
    r = generate(model="Tongyi-MAI/Z-Image-Turbo", output=tmp_path / "o.png")
    assert_clean_failure(r, "--model")


def test_success_writes_png_and_prints_seed(tiny_engine_model_dir, tmp_path):
    r = generate(model=tiny_engine_model_dir, output=tmp_path / "o.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.png").exists() and "seed 1" in r.stderr
