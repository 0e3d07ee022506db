"""Request building, sizes, capabilities, history records (bpy-free)."""

from __future__ import annotations

import json
import random

import pytest

from blender_addon.core import history, requests as rq
from blender_addon.core.errors import explain
from protocol.request import random_seed

LIMITS = rq.EngineLimits(min_side=256, max_side=2048)


def test_presets_are_multiples_of_16():
    for _key, _label, w, h in rq.SIZE_PRESETS:
        assert w % 16 == 0 and h % 16 == 0
        assert rq.size_problem(w, h, LIMITS) is None


@pytest.mark.parametrize("aspect", [16 / 9, 4 / 3, 1.0, 9 / 16, 2.39, 0.2, 7.0])
def test_size_for_aspect(aspect):
    w, h = rq.size_for_aspect(aspect, 1024 * 1024, LIMITS)
    assert w % 16 == 0 and h % 16 == 0
    assert rq.size_problem(w, h, LIMITS) is None
    clamped = min(max(aspect, 256 / 2048), 2048 / 256)
    assert abs(w / h - clamped) / clamped < 0.1


def test_build_request_fixed_and_random_seed():
    s = rq.Settings(prompt="  a red fox  ", width=512, height=768, steps=8, seed_random=False,
                    seed=42, num_images=2)
    req = rq.build_request(s, LIMITS, {"txt2img"})
    assert req.params == {"prompt": "a red fox", "width": 512, "height": 768, "steps": 8,
                          "seed": 42, "num_images": 2}
    assert req.blobs == {}
    s.seed_random = True
    req = rq.build_request(s, LIMITS, set(), rng=random.Random(1))
    # the protocol's one draw (protocol/request.py), bounded by the panel's IntProperty
    assert req.seed == random_seed(2, upper=rq.MAX_SEED, rng=random.Random(1))
    assert req.seed == random.Random(1).randrange(rq.MAX_SEED)     # seed + 1 fits too



def test_random_seeds_fit_the_panels_seed_field_for_every_image(monkeypatch):
    """Image i uses seed + i; each of them can be recalled into the IntProperty."""
    monkeypatch.setattr(rq, "MAX_SEED", 5)
    seeds = {rq.resolve_seed(rq.Settings("p", num_images=4)) for _ in range(300)}
    assert seeds == {0, 1, 2}
    assert rq.resolve_seed(rq.Settings("p", seed_random=False, seed=5, num_images=4)) == 5


def test_build_request_is_the_protocols_typed_request():
    """The add-on builds protocol/request.py's GenerateRequest, checked once against the
    engine's limits: what the add-on does not check itself (a 4,001-character prompt, a
    strength out of range) is refused before sending, naming the field."""
    with pytest.raises(rq.RequestError) as e:
        rq.build_request(rq.Settings(prompt="x" * 4001), LIMITS, {"txt2img"})
    assert e.value.code == "invalid_params" and e.value.detail.startswith("params.prompt")
    s = rq.Settings(prompt="fox", context="img2img", strength=1.5, seed_random=False)
    with pytest.raises(rq.RequestError) as e:
        rq.build_request(s, LIMITS, {"img2img"}, init_png=b"\x89PNG fake")
    assert e.value.detail.startswith("params.strength")
    s.strength = 0.5
    req = rq.build_request(s, LIMITS, {"img2img"}, init_png=b"\x89PNG fake")
    assert req.params["init_image"] == "init_image" and req.params["strength"] == 0.5


def test_build_request_refuses_what_the_engine_would_refuse():
    def code(**kw):
        base = dict(prompt="x", width=512, height=512)
        base.update(kw)
        with pytest.raises(rq.RequestError) as exc:
            rq.build_request(rq.Settings(**base), LIMITS, {"txt2img"}, init_png=b"png")
        return exc.value.code
    assert code(width=500) == "unsupported_size"
    assert code(width=128) == "unsupported_size"
    assert code(prompt="   ") == "invalid_params"
    assert code(steps=0) == "invalid_params"
    assert code(num_images=9) == "invalid_params"
    assert code(context="img2img") == "capability_unavailable"
    assert code(context="depth") == "capability_unavailable"


def test_image_context_params():
    s = rq.Settings(prompt="x", width=512, height=512, context="img2img", strength=0.4)
    req = rq.build_request(s, LIMITS, {"img2img"}, init_png=b"\x89PNG")
    assert req.params["init_image"] == "init_image" and req.params["strength"] == 0.4
    assert req.blobs == {"init_image": b"\x89PNG"}
    s.context = "depth"
    req = rq.build_request(s, LIMITS, {"control", "control.depth"}, depth_png=b"D")
    assert req.params["control_type"] == "depth" and req.blobs == {"control_image": b"D"}


def test_capabilities_and_limits_from_welcome():
    welcome = {"caps": ["txt2img", "img2img", "preview.jpeg"],
               "limits": {"min_side": 64, "max_side": 1024, "max_steps": 20, "junk": "x"}}
    caps = rq.capabilities(welcome)
    assert rq.can_img2img(caps) and not rq.can_depth(caps) and not rq.can_free_vram(caps)
    assert rq.can_depth({"control.depth"}) and rq.can_free_vram({"unload"})
    lim = rq.EngineLimits.from_welcome(welcome)
    assert (lim.min_side, lim.max_side, lim.max_steps) == (64, 1024, 20)
    assert rq.EngineLimits.from_welcome(None) == rq.EngineLimits()


def test_pre_welcome_limits_are_the_protocols_defaults():
    from protocol.messages import Limits
    proto, mine = Limits(), rq.EngineLimits()
    for name in mine.__dataclass_fields__:
        assert getattr(mine, name) == getattr(proto, name), name
    assert mine.min_side == 64
    s = rq.Settings(prompt="small", width=64, height=64, seed_random=False)
    assert rq.build_request(s, rq.EngineLimits(), {"txt2img"}).params["width"] == 64


def test_image_names_fit_blender():
    assert rq.image_name("a red fox", 42) == "a red fox (42)"
    long = rq.image_name("word " * 40, 2**31 - 1)
    assert len(long.encode()) <= 63 and long.endswith("(2147483647)")
    assert len(rq.image_name("日本語の長いプロンプト" * 5, 1).encode()) <= 63


def test_history_record_roundtrip():
    rec = history.Record("a fox", 7, 8, 512, 768, "Tongyi-MAI/Z-Image-Turbo")
    params = json.loads(rec.parameters_json())
    assert list(params) == ["prompt", "seed", "steps", "width", "height", "model"]
    assert history.parse_parameters(rec.parameters_json()) == params
    assert history.parse_parameters("not json") is None
    assert history.parse_parameters('{"prompt": "x"}') is None
    props = rec.image_props()
    back = history.Record.from_image_props(props, "img")
    assert back.parameters() == rec.parameters() and back.image_name == "img"
    assert history.Record.from_image_props({}, "x") is None
    assert history.recall_settings(rec) == {"prompt": "a fox", "width": 512, "height": 768,
                                            "steps": 8, "seed": 7, "seed_random": False}
    assert history.trim(105) == 5 and history.trim(3) == 0


def test_error_texts_say_what_to_do():
    for code in ("engine_unreachable", "engine_lost", "out_of_memory", "unsupported_size"):
        err = explain(code)
        assert err.message.endswith(".") and err.hint
    assert "Unsupported size 100 x 64" in explain("unsupported_size", "100 x 64").message


def test_free_vram_needs_the_unload_cap_and_reports_what_it_freed():
    assert rq.can_free_vram({"unload", "txt2img"}) and not rq.can_free_vram({"txt2img"})
    assert rq.unloaded_notice(12 * 1024**3).startswith("12.0 GB of GPU memory freed")
    assert rq.unloaded_notice(0) == "GPU memory freed; the next job reloads the model"


def test_loras_travel_from_settings_to_the_png_and_back():
    caps = {"txt2img", "lora"}
    s = rq.Settings(prompt="a wall", seed_random=False, seed=3,
                          loras=(("brick", 0.5), ("moss", -1.0)))
    req = rq.build_request(s, rq.EngineLimits(), caps)
    assert req.params["loras"] == [{"name": "brick", "weight": 0.5},
                                   {"name": "moss", "weight": -1.0}]
    with pytest.raises(rq.RequestError) as e:
        rq.build_request(s, rq.EngineLimits(), {"txt2img"})
    assert e.value.code == "capability_unavailable"
    bad = rq.Settings(prompt="a wall", loras=(("brick", 9.0),))
    with pytest.raises(rq.RequestError) as e:
        rq.build_request(bad, rq.EngineLimits(), caps)
    assert "loras" in e.value.detail

    rec = history.Record("a wall", 3, 8, 1024, 1024, "m", loras=(("brick", 0.5),))
    assert history.parse_parameters(rec.parameters_json())["loras"] == [
        {"name": "brick", "weight": 0.5}]
    back = history.Record.from_image_props(rec.image_props(), "img")
    assert back.loras == (("brick", 0.5),)
    assert history.recall_settings(back)["loras"] == (("brick", 0.5),)
    assert history.parse_loras("not json") == () and history.parse_loras([{"name": 3}]) == ()

    welcome = {"loras": [{"name": "brick", "rank": 4, "trigger_words": "lhstyle"}, "junk",
                         {"name": 5}]}
    assert rq.engine_loras(welcome) == [{"name": "brick", "rank": 4,
                                              "trigger_words": "lhstyle"}]
