"""LoRAs over the wire with the real tiny pipeline: `engine serve --lora-dir` lists them in the
welcome, `python -m protocol generate --lora NAME:WEIGHT` gets the same pixels as
`engine generate --lora FILE:WEIGHT`, bad requests name the field and the engine keeps serving,
and a file added to the folder reaches connected clients without a restart."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocol.client import EngineClient
from tests.engine.test_lora import ATTENTION, _random_pairs, write_kohya
from tests.engine.test_serve_e2e import client
from tests.fixtures.serve import serving

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("served-loras")
    write_kohya(d / "brick.safetensors", _random_pairs(tiny_model_dir, ATTENTION, 4, seed=5), 2)
    return d


@pytest.fixture(scope="module")
def engine(tiny_model_dir, lora_dir):
    with serving(tiny_model_dir, "--min-side", "64", "--lora-dir", str(lora_dir)) as endpoint:
        yield endpoint


def _welcome_when(c: EngineClient, pred, timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        c.poll(timeout=0.1)
        if c.welcome and pred(c.welcome):
            return c.welcome
    raise AssertionError(f"no such welcome: {c.welcome}")


def test_served_lora_equals_the_local_cli(engine, tiny_model_dir, lora_dir, tmp_path):
    served = tmp_path / "served.png"
    r = client(engine, "--prompt", "a brick wall", "--width", "64", "--height", "64", "--steps",
               "3", "--seed", "4", "--lora", "brick:0.5", "--output", str(served))
    assert r.returncode == 0, r.stderr
    params = json.loads(Image.open(served).text["parameters"])
    assert params["loras"] == [{"name": "brick", "weight": 0.5}]

    local = tmp_path / "local.png"
    r = subprocess.run([sys.executable, "-m", "engine", "generate", "--model", str(tiny_model_dir),
                        "--prompt", "a brick wall", "--width", "64", "--height", "64", "--steps",
                        "3", "--seed", "4", "--lora", f"{lora_dir / 'brick.safetensors'}:0.5",
                        "--device", "cpu", "--dtype", "float32", "--output", str(local)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a = np.asarray(Image.open(served).convert("RGB"))
    b = np.asarray(Image.open(local).convert("RGB"))
    assert np.array_equal(a, b)

    plain = tmp_path / "plain.png"
    r = client(engine, "--prompt", "a brick wall", "--width", "64", "--height", "64", "--steps",
               "3", "--seed", "4", "--output", str(plain))
    assert r.returncode == 0, r.stderr
    assert not np.array_equal(np.asarray(Image.open(plain).convert("RGB")), a)


@pytest.mark.parametrize("arg,words", [("nope:1", "nope"), ("brick:9", "weight"),
                                       ("../brick", "path")])
def test_bad_lora_requests_name_the_field(engine, tmp_path, arg, words):
    r = client(engine, "--prompt", "x", "--width", "64", "--height", "64", "--steps", "1",
               "--lora", arg, "--output", str(tmp_path / "x.png"))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "invalid_params" in last and "loras" in last and words in last, last


def test_welcome_lists_loras_and_new_files_show_up(engine, lora_dir):
    c = EngineClient(engine, client_name="lora-test", client_version="1")
    c.start()
    try:
        w = _welcome_when(c, lambda w: w["engine"]["state"] == "ready")
        assert "lora" in w["caps"]
        assert [x["name"] for x in w["loras"]] == ["brick"]
        assert w["loras"][0]["rank"] == 4 and "path" not in w["loras"][0]
        shutil.copy(lora_dir / "brick.safetensors", lora_dir / "moss.safetensors")
        try:
            w = _welcome_when(c, lambda w: len(w.get("loras", [])) == 2, timeout=15)
            assert [x["name"] for x in w["loras"]] == ["brick", "moss"]
        finally:
            (lora_dir / "moss.safetensors").unlink()
    finally:
        c.close()
