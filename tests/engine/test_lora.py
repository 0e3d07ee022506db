"""LoRA files in the layouts people share, against diffusers 0.42.1's load_lora_weights + set_adapters.

The tests write the LoRA files themselves from one set of random low-rank pairs: a PEFT file saved
by diffusers' own `save_lora_weights` (alpha in its adapter metadata), a kohya one (`lora_unet_`,
lora_down/lora_up/alpha), and the fused-qkv layout of ComfyUI / musubi-tuner (original module
names). diffusers loads the fused qkv only in its dotted spelling, so that is what the oracle reads
for the third one: same math, other key names.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.errors import EngineError
from engine.loading import load_pipeline
from engine.lora import LoraSet, lora_info, read_lora
from engine.pipeline import GenerateRequest
from tests.fixtures.zimage import load_reference_pipeline, reference_images

PROMPT = "a lighthouse at dusk"
W, H, STEPS, SEED = 80, 64, 4, 7

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
FFN = ("w1", "w2", "w3")


def _linear_shapes(model_dir) -> dict[str, tuple[int, int]]:
    """diffusers module name -> (out, in) for every 2-D weight of the tiny transformer."""
    from safetensors import safe_open

    shapes = {}
    for f in sorted((model_dir / "transformer").glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                if k.endswith(".weight") and len(shape) == 2:
                    shapes[k[: -len(".weight")]] = tuple(shape)
    return shapes


def _random_pairs(model_dir, targets, rank, seed, scale=0.4):
    """name -> (A [rank, in], B [out, rank]) for every block module whose name ends in a target."""
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for name, (out_f, in_f) in _linear_shapes(model_dir).items():
        if any(name.endswith("." + t) for t in targets):
            pairs[name] = (torch.randn(rank, in_f, generator=g) * scale / in_f ** 0.5,
                           torch.randn(out_f, rank, generator=g) * scale / rank ** 0.5)
    return pairs


def write_peft(path, pairs, rank, alpha):
    from diffusers import ZImagePipeline
    from peft import LoraConfig

    layers = {}
    for name, (a, b) in pairs.items():
        layers[f"{name}.lora_A.weight"] = a.clone()
        layers[f"{name}.lora_B.weight"] = b.contiguous()
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(pairs)).to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    ZImagePipeline.save_lora_weights(str(path.parent), transformer_lora_layers=layers,
                                     weight_name=path.name,
                                     transformer_lora_adapter_metadata=config)
    return path


def write_kohya(path, pairs, alpha):
    sd = {}
    for name, (a, b) in pairs.items():
        key = "lora_unet_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = a.clone()
        sd[f"{key}.lora_up.weight"] = b.contiguous()
        sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    save_file(sd, str(path), metadata={"ss_tag_frequency": json.dumps({"ds": {"lhstyle": 9,
                                                                             "dusk": 3}})})
    return path


def _qkv_fused(pairs):
    """Per block, one fused qkv pair (A shared, B = [B_q; B_k; B_v]) + the other modules."""
    out = {}
    for name, (a, b) in pairs.items():
        if name.endswith(".attention.to_q"):
            block = name[: -len("to_q")]
            bs = [pairs[block + p][1] for p in ("to_q", "to_k", "to_v")]
            out[block + "qkv"] = (a, torch.cat(bs))
        elif not name.endswith((".attention.to_k", ".attention.to_v")):
            out[name] = (a, b)
    return out


def write_fused_qkv(path, pairs, alpha, *, dotted: bool):
    """ComfyUI / musubi: original names (attention.qkv, attention.out). `dotted`: the spelling
    diffusers can read (`.lora.down.weight`), else musubi's kohya spelling."""
    sd = {}
    for name, (a, b) in _qkv_fused(pairs).items():
        orig = name.replace(".attention.to_out.0", ".attention.out")
        if dotted:
            key, down, up = f"diffusion_model.{orig}", ".lora.down.weight", ".lora.up.weight"
        else:
            key, down, up = "lora_unet_" + orig.replace(".", "_"), ".lora_down.weight", ".lora_up.weight"
        sd[key + down], sd[key + up] = a.clone(), b.clone()
        sd[key + ".alpha"] = torch.tensor(float(alpha))
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def lora_files(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    # qkv LoRAs must share A across q, k, v to be expressible fused: draw q's A for all three.
    attn = _random_pairs(tiny_model_dir, ATTENTION + FFN, rank=4, seed=1)
    for name in list(attn):
        if name.endswith((".attention.to_k", ".attention.to_v")):
            a_q = attn[name[:-4] + "to_q"][0]
            attn[name] = (a_q, attn[name][1])
    style = _random_pairs(tiny_model_dir, ("to_q", "to_v", "adaLN_modulation.0"), rank=2, seed=2)
    return {
        "peft": write_peft(d / "peft_style.safetensors", style, rank=2, alpha=4),
        "kohya": write_kohya(d / "kohya_attn.safetensors", attn, alpha=2),
        "musubi": write_fused_qkv(d / "musubi_qkv.safetensors", attn, alpha=2, dotted=False),
        "dotted": write_fused_qkv(d / "dotted_qkv.safetensors", attn, alpha=2, dotted=True),
    }


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    return load_reference_pipeline(tiny_model_dir)


def _ours(pipe, loras):
    lora_set = getattr(pipe, "_test_loras", None) or LoraSet(pipe.transformer)
    pipe._test_loras = lora_set
    names = set(lora_set.slots)
    lora_set.apply([(read_lora(p, names), w) for p, w in loras], device=torch.device("cpu"),
                   dtype=torch.float32)
    try:
        return pipe.generate(GenerateRequest(PROMPT, W, H, steps=STEPS, seed=SEED)).images[0]
    finally:
        lora_set.clear()


def _theirs(ref, tiny_model_dir, loras):
    names = []
    for i, (path, w) in enumerate(loras):
        ref.load_lora_weights(str(path), adapter_name=f"a{i}")
        names.append(f"a{i}")
    ref.set_adapters(names, adapter_weights=[w for _, w in loras])
    try:
        return reference_images(tiny_model_dir, PROMPT, W, H, STEPS, SEED, pipe=ref)[0]
    finally:
        ref.delete_adapters(names)


def _close(ours, theirs):
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()}/255"


@pytest.fixture(scope="module")
def base_image(pipe):
    return pipe.generate(GenerateRequest(PROMPT, W, H, steps=STEPS, seed=SEED)).images[0]


@pytest.mark.parametrize("layout,oracle_layout", [("peft", "peft"), ("kohya", "kohya"),
                                                  ("musubi", "dotted"), ("dotted", "dotted")])
@pytest.mark.parametrize("weight", [1.0, 0.5, -0.7])
def test_one_lora_matches_diffusers(pipe, ref, tiny_model_dir, lora_files, base_image, layout,
                                    oracle_layout, weight):
    ours = _ours(pipe, [(lora_files[layout], weight)])
    theirs = _theirs(ref, tiny_model_dir, [(lora_files[oracle_layout], weight)])
    _close(ours, theirs)
    changed = np.abs(ours.astype(int) - base_image.astype(int)).max()
    assert changed > 8, "the LoRA hardly changes the image: the comparison would prove nothing"


@pytest.mark.parametrize("weights", [(1.0, 0.5), (0.5, -0.7)])
def test_two_loras_match_diffusers(pipe, ref, tiny_model_dir, lora_files, weights):
    ours = _ours(pipe, [(lora_files["peft"], weights[0]), (lora_files["musubi"], weights[1])])
    theirs = _theirs(ref, tiny_model_dir, [(lora_files["peft"], weights[0]),
                                           (lora_files["dotted"], weights[1])])
    _close(ours, theirs)


def test_clearing_gives_the_base_image_bit_for_bit(pipe, lora_files, base_image):
    _ours(pipe, [(lora_files["kohya"], 1.0)])  # applies, generates, clears
    again = pipe.generate(GenerateRequest(PROMPT, W, H, steps=STEPS, seed=SEED)).images[0]
    assert np.array_equal(again, base_image)
    assert not any(getattr(m, "lora_down", None) is not None for m in pipe.transformer.modules())


def test_switching_sets_never_touches_the_base_weights(pipe, lora_files):
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in pipe.transformer.state_dict().items()}
    lora_set = LoraSet(pipe.transformer)
    names = set(lora_set.slots)
    a = [(read_lora(lora_files["peft"], names), 1.0)]
    b = [(read_lora(lora_files["kohya"], names), 0.5), (read_lora(lora_files["peft"], names), -0.7)]
    for i in range(20):
        lora_set.apply(a if i % 2 else b, device=torch.device("cpu"), dtype=torch.float32)
        assert len(lora_set._modules) > 0
    lora_set.clear()
    after = pipe.transformer.state_dict()
    assert {k: v.data_ptr() for k, v in after.items()} == ptrs
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_info_reads_rank_and_trigger_words(lora_files):
    info = lora_info(lora_files["kohya"])
    assert (info.name, info.rank) == ("kohya_attn", 4)
    assert info.trigger_words.startswith("lhstyle")
    assert lora_info(lora_files["peft"]).rank == 2


# --- bad files: one clear error each ------------------------------------------------------------

def _names(pipe):
    return set(LoraSet(pipe.transformer).slots)


@pytest.mark.parametrize("keys,code,words", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8),
      "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (8, 4)},
     "lora_incompatible", "down_blocks_0"),  # SDXL
    ({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 8),
      "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": (8, 4)},
     "lora_incompatible", "single_transformer_blocks"),  # Flux
    ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8)},
     "lora_unsupported", "text encoder"),
    ({"layers.0.attention.to_q.lokr_w1": (4, 4)}, "lora_unsupported", "LoKr"),
    ({"layers.0.attention.to_q.hada_w1_a": (4, 4)}, "lora_unsupported", "LoHa"),
    ({"layers.0.attention.to_q.lora_A.weight": (4, 8),
      "layers.0.attention.to_q.dora_scale": (1, 8)}, "lora_unsupported", "DoRA"),
])
def test_foreign_files_are_refused_by_name(pipe, tmp_path, keys, code, words):
    path = tmp_path / "x.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(EngineError) as e:
        read_lora(path, _names(pipe))
    assert e.value.code == code and words in e.value.message


def test_rank_mismatch_non_finite_and_corrupt(pipe, tmp_path, tiny_model_dir):
    (name, (out_f, in_f)), = [(n, s) for n, s in _linear_shapes(tiny_model_dir).items()
                               if n == "layers.0.attention.to_q"]
    bad = tmp_path / "rank.safetensors"
    save_file({f"{name}.lora_A.weight": torch.zeros(4, in_f),
               f"{name}.lora_B.weight": torch.zeros(out_f, 3)}, str(bad))
    with pytest.raises(EngineError) as e:
        read_lora(bad, _names(pipe))
    assert e.value.code == "lora_invalid" and "ranks" in e.value.message

    nan = tmp_path / "nan.safetensors"
    save_file({f"{name}.lora_A.weight": torch.full((4, in_f), float("nan")),
               f"{name}.lora_B.weight": torch.zeros(out_f, 4)}, str(nan))
    with pytest.raises(EngineError) as e:
        read_lora(nan, _names(pipe))
    assert e.value.code == "lora_invalid" and "non-finite" in e.value.message

    wrong = tmp_path / "shape.safetensors"
    save_file({f"{name}.lora_A.weight": torch.zeros(4, in_f + 1),
               f"{name}.lora_B.weight": torch.zeros(out_f, 4)}, str(wrong))
    lora = read_lora(wrong, _names(pipe))
    with pytest.raises(EngineError) as e:
        LoraSet(pipe.transformer).apply([(lora, 1.0)], device=torch.device("cpu"),
                                        dtype=torch.float32)
    assert e.value.code == "lora_incompatible" and "does not fit" in e.value.message

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for fn in (lambda: read_lora(corrupt, _names(pipe)), lambda: lora_info(corrupt)):
        with pytest.raises(EngineError) as e:
            fn()
        assert e.value.code == "lora_corrupt"


def test_library_sees_new_files_and_refuses_unknown_names(pipe, lora_files, tmp_path):
    import shutil

    from engine.lora import LoraLibrary

    lib = LoraLibrary(tmp_path)
    assert lib.infos() == []
    shutil.copy(lora_files["kohya"], tmp_path / "brick.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    assert [i.name for i in lib.infos()] == ["brick"]  # the broken file is left out
    lora = lib.read("brick", _names(pipe))
    assert lib.read("brick", _names(pipe)) is lora  # cached while the file is unchanged
    with pytest.raises(EngineError) as e:
        lib.read("../brick", _names(pipe))
    assert (e.value.code, e.value.field) == ("invalid_params", "loras")


def test_cli_lora_equals_diffusers_and_png_records_it(ref, tiny_model_dir, lora_files, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    out = tmp_path / "out.png"
    r = subprocess.run([sys.executable, "-m", "engine", "generate", "--model", str(tiny_model_dir),
                        "--prompt", PROMPT, "--width", str(W), "--height", str(H), "--steps",
                        str(STEPS), "--seed", str(SEED), "--output", str(out), "--lora",
                        f"{lora_files['kohya']}:0.5", "--lora", str(lora_files["peft"])],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    png = Image.open(out)
    params = json.loads(png.text["parameters"])
    assert params["loras"] == [{"name": "kohya_attn", "weight": 0.5},
                               {"name": "peft_style", "weight": 1.0}]
    theirs = _theirs(ref, tiny_model_dir, [(lora_files["kohya"], 0.5), (lora_files["peft"], 1.0)])
    _close(np.asarray(png.convert("RGB")), theirs)

    r = subprocess.run([sys.executable, "-m", "engine", "generate", "--model", str(tiny_model_dir),
                        "--prompt", PROMPT, "--lora", str(tmp_path / "nope.safetensors:0.5")],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "[invalid_params]" in r.stderr


def test_pipeline_request_names_loras_from_its_library(pipe, lora_files, base_image, tmp_path):
    import shutil

    from engine.lora import LoraLibrary

    shutil.copy(lora_files["peft"], tmp_path / "style.safetensors")
    old = pipe.lora_library
    pipe.lora_library = LoraLibrary(tmp_path)
    try:
        styled = pipe.generate(GenerateRequest(PROMPT, W, H, steps=STEPS, seed=SEED,
                                               loras=(("style", 0.5),))).images[0]
        assert pipe.loras.active == (("style", 0.5),)
        assert np.abs(styled.astype(int) - base_image.astype(int)).max() > 8
        for bad in [(("nope", 1.0),), (("style", 9.0),), (("style", 1.0), ("style", 0.5)),
                    (("style", float("nan")),)]:
            with pytest.raises(EngineError) as e:
                pipe.generate(GenerateRequest(PROMPT, W, H, steps=STEPS, seed=SEED, loras=bad))
            assert e.value.code == "invalid_params" and e.value.field.startswith("loras")
        plain = pipe.generate(GenerateRequest(PROMPT, W, H, steps=STEPS, seed=SEED)).images[0]
        assert np.array_equal(plain, base_image) and pipe.loras.active == ()
    finally:
        pipe.lora_library = old


def test_compiled_blocks_follow_lora_changes(tiny_model_dir, lora_files, tmp_path, monkeypatch):
    """Regional compile (dynamo; the eager backend keeps it quick on this CPU) must not bake a
    LoRA set into its graph: adding, switching and clearing hooks is seen by the next call."""
    import shutil

    from engine import compile as compiling
    from engine.lora import LoraLibrary

    for name in ("kohya", "peft"):
        shutil.copy(lora_files[name], tmp_path / f"{name}.safetensors")
    eager = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32",
                          loras=LoraLibrary(tmp_path))
    compiled = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32",
                             loras=LoraLibrary(tmp_path))
    monkeypatch.setattr(compiling, "_compile",
                        lambda fn, mode, dynamic=None: torch.compile(fn, backend="eager"))
    compiling.compile_pipeline(compiled)
    for loras in [(), (("kohya", 1.0),), (("kohya", 0.5), ("peft", -0.7)), ()]:
        req = GenerateRequest(PROMPT, 64, 64, steps=2, seed=3, loras=loras)
        a, b = eager.generate(req).images[0], compiled.generate(req).images[0]
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, loras
