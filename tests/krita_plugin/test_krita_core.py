"""The plugin's Krita-free core (krita_plugin/zimage_krita/core), run from the checkout
without Krita: request building, pixels, wheel choice, messages, the build's contents and
the layering rule."""

from __future__ import annotations

import ast
import random
import sys
import zipfile

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "krita_plugin"))

from zimage_krita.core import deps, messages, pixels, requests  # noqa: E402
from zimage_krita.core.link import Raw  # noqa: E402
from zimage_krita.core.requests import Capture, KritaSettings, RequestError  # noqa: E402
from zimage_krita.core.session import Session  # noqa: E402

LIMITS = requests.EngineLimits()
ALL_CAPS = {"txt2img", "img2img", "inpaint", "tile"}


def build(settings, canvas=(128, 96), capture=None, caps=ALL_CAPS):
    return requests.build(settings, LIMITS, caps, canvas, capture, rng=random.Random(0))


def test_generate_uses_the_canvas_size_a_preset_or_a_custom_size():
    s = KritaSettings("a red fox", seed_random=False, seed=5, steps=4)
    assert build(s).params == {"prompt": "a red fox", "width": 128, "height": 96, "steps": 4,
                               "seed": 5, "num_images": 1}
    s.size = "1024x768"
    assert (build(s).params["width"], build(s).params["height"]) == (1024, 768)
    s.size, s.width, s.height = "custom", 320, 64
    assert (build(s).params["width"], build(s).params["height"]) == (320, 64)
    assert build(s).blobs == {}


@pytest.mark.parametrize("size", [(70, 64), (64, 4096), (32, 32)])
def test_bad_sizes_are_refused_before_sending(size):
    s = KritaSettings("x", size="custom", width=size[0], height=size[1])
    with pytest.raises(RequestError) as err:
        build(s)
    assert err.value.code == "unsupported_size"
    assert messages.explain(err.value.code, err.value.detail).message.startswith(
        f"Unsupported size {size[0]} x {size[1]}")


def test_any_canvas_is_padded_to_the_engines_multiple_and_cropped_back():
    p = build(KritaSettings("x"), canvas=(100, 30)).params
    assert (p["width"], p["height"]) == (112, 64)          # multiple of 16, min side 64
    assert requests.crops_to_canvas(KritaSettings("x"))
    assert not requests.crops_to_canvas(KritaSettings("x", size="1024"))
    with pytest.raises(RequestError) as err:
        build(KritaSettings("x"), canvas=(3000, 100))
    assert err.value.code == "unsupported_size"


def test_a_padded_capture_keeps_every_canvas_pixel_in_place():
    w, h = 5, 3
    rgb = bytes(range(w * h * 3))
    mask = bytes([255] * (w * h))
    req = build(KritaSettings("x", mode="inpaint"), canvas=(w, h),
                capture=Capture(w, h, rgb, mask))
    init, m = req.blobs["init_image"], req.blobs["mask"]
    assert (init.width, init.height, m.width, m.height) == (64, 64, 64, 64)
    assert pixels.crop(init.data, 64, 64, 3, w, h) == rgb
    assert pixels.crop(m.data, 64, 64, 1, w, h) == mask
    assert sum(m.data) == 255 * w * h                      # the padding is never repainted
    row0 = init.data[:64 * 3]
    assert row0[w * 3:] == rgb[(w - 1) * 3:w * 3] * (64 - w)     # edge repeated
    assert init.data[-64 * 3:] == init.data[(h - 1) * 64 * 3:h * 64 * 3]


def test_random_seed_is_drawn_here_so_the_layer_name_knows_it():
    a = build(KritaSettings("x")).params["seed"]
    assert isinstance(a, int) and 0 <= a <= requests.shared.requests.MAX_SEED


def test_image_to_image_sends_the_canvas_as_raw_rgb_with_strength():
    cap = Capture(128, 96, bytes(128 * 96 * 3))
    req = build(KritaSettings("x", mode="img2img", strength=0.45), capture=cap)
    assert req.params["init_image"] == "init_image" and req.params["strength"] == 0.45
    assert req.blobs["init_image"] == Raw(128, 96, 3, cap.rgb)
    assert "mask" not in req.params
    # image to image always works on the canvas as it is, whatever the size choice
    assert build(KritaSettings("x", mode="img2img", size="1024"), capture=cap).params[
        "width"] == 128


def test_inpainting_sends_the_selection_as_the_mask_and_needs_one():
    mask = bytes(128 * 96 - 1) + b"\xff"
    cap = Capture(128, 96, bytes(128 * 96 * 3), mask)
    req = build(KritaSettings("x", mode="inpaint"), capture=cap)
    assert req.params["mask"] == "mask" and req.blobs["mask"] == Raw(128, 96, 1, mask)
    assert "strength" not in req.params           # the engine's 1.0 with a mask
    for empty in (None, bytes(128 * 96)):
        with pytest.raises(RequestError) as err:
            build(KritaSettings("x", mode="inpaint"), capture=Capture(128, 96, cap.rgb, empty))
        assert err.value.code == "no_selection"


def test_capabilities_are_checked_once_the_engine_said_them():
    cap = Capture(128, 96, bytes(128 * 96 * 3), b"\xff" * (128 * 96))
    for mode, missing in (("img2img", "img2img"), ("inpaint", "inpaint")):
        with pytest.raises(RequestError) as err:
            build(KritaSettings("x", mode=mode), capture=cap, caps=ALL_CAPS - {missing})
        assert err.value.code == "capability_unavailable"
        build(KritaSettings("x", mode=mode), capture=cap, caps=None)   # not connected yet
    assert build(KritaSettings("x", seamless=True)).params["tile"] == "xy"
    with pytest.raises(RequestError):
        build(KritaSettings("x", seamless=True), caps={"txt2img"})


def test_a_capture_of_another_size_is_refused():
    with pytest.raises(RequestError) as err:
        build(KritaSettings("x", mode="img2img"), capture=Capture(64, 64, bytes(64 * 64 * 3)))
    assert err.value.code == "capture_failed"


def test_bgra_and_rgb_round_trip_with_a_mask_as_alpha():
    rgb = bytes(range(2 * 3 * 3))
    bgra = pixels.rgb_to_bgra(rgb, 3, 2, alpha=bytes([0, 255, 9, 8, 7, 6]))
    assert bgra[:8] == bytes([2, 1, 0, 0, 5, 4, 3, 255])
    assert pixels.bgra_to_rgb(bgra, 3, 2) == rgb
    assert pixels.rgb_to_bgra(rgb, 3, 2)[3::4] == b"\xff" * 6
    with pytest.raises(ValueError):
        pixels.rgb_to_bgra(rgb, 4, 2)


def test_the_wheel_for_the_running_python_is_chosen(tmp_path, monkeypatch):
    names = ["pyzmq-27.3.0-cp310-cp310-manylinux_2_28_x86_64.whl",
             "pyzmq-27.3.0-cp311-cp311-manylinux_2_28_x86_64.whl",
             "pyzmq-27.3.0-cp312-abi3-manylinux_2_28_x86_64.whl",
             "pyzmq-27.3.0-cp311-cp311-win_amd64.whl"]
    monkeypatch.setattr(deps.sysconfig, "get_platform", lambda: "linux-x86_64")
    fits = {v: [n for n in names if deps.wheel_fits(n, v)]
            for v in ((3, 10), (3, 11), (3, 12), (3, 13), (3, 9))}
    assert fits == {(3, 10): [names[0]], (3, 11): [names[1]], (3, 12): [names[2]],
                    (3, 13): [names[2]], (3, 9): []}
    for n in names:
        (tmp_path / n).write_bytes(b"")
    assert deps.pick_wheel(tmp_path).name == [n for n in names if deps.wheel_fits(n)][0]


def test_messages_point_at_the_docker_not_at_blender():
    for code in ("engine_unreachable", "engine_not_started", "unauthorized",
                 "model_unavailable", "apply_failed", "capture_failed", "out_of_memory"):
        text = messages.explain(code).text
        assert "Blender" not in text and "Preferences" not in text and "VRAM" not in text
    assert "docker" in messages.explain("engine_unreachable").hint
    shared_error = requests.shared.errors.explain("engine_unreachable")
    assert messages.localize(shared_error).hint == messages.explain("engine_unreachable").hint
    assert messages.explain("no_selection").message.startswith("Inpainting repaints")


def test_session_without_an_engine_says_so():
    s = Session()
    assert s.submit(requests.shared.requests.Request({"prompt": "x"}), {}) is None
    assert s.notice.startswith("The image engine is not running")
    assert not s.connect("not-an-address")
    assert "endpoint" in s.notice and s.link is None
    assert s.engine_line() == "Engine: not connected" and s.caps() is None


def test_the_zip_is_a_pykrita_plugin_with_protocol_shared_core_and_wheels(krita_zip):
    with zipfile.ZipFile(krita_zip) as zf:
        names = set(zf.namelist())
        desktop = zf.read("zimage_krita.desktop").decode()
        client = zf.read("zimage_krita/vendor/protocol/client.py").decode()
        jobs = zf.read("zimage_krita/addon_core/jobs.py")
    assert "X-KDE-Library=zimage_krita" in desktop and "Krita/PythonPlugin" in desktop
    assert {"zimage_krita/", "zimage_krita/__init__.py", "zimage_krita/core/session.py",
            "zimage_krita/glue/docker.py", "zimage_krita/vendor/protocol/PROTOCOL.md",
            "zimage_krita/addon_core/requests.py", "zimage_krita/addon_core/errors.py"} <= names
    assert jobs == (ROOT / "blender_addon" / "core" / "jobs.py").read_bytes()
    assert "from protocol" not in client and "from .wire import" in client
    wheels = sorted(n.split("/")[-1].split("-")[2] for n in names if n.endswith(".whl"))
    assert wheels == ["cp310", "cp311", "cp312"]
    assert not any("__pycache__" in n or "/.deps/" in n for n in names)


def test_krita_installs_the_zip_as_a_plugin(pykrita_dir):
    assert (pykrita_dir / "zimage_krita.desktop").is_file()
    assert (pykrita_dir / "zimage_krita" / "addon_core" / "jobs.py").is_file()
    assert len(list((pykrita_dir / "zimage_krita" / "wheels").glob("pyzmq-*.whl"))) == 3


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_core_knows_nothing_of_krita_and_nothing_imports_torch():
    pkg = ROOT / "krita_plugin" / "zimage_krita"
    heavy = {"torch", "numpy", "bpy", "engine", "diffusers", "transformers", "PIL"}
    for path in pkg.rglob("*.py"):
        bad = _imports(path) & (heavy | ({"krita", "PyQt5"} if "core" in path.parts else set()))
        assert not bad, (path, bad)


def test_history_survives_a_restart_and_ignores_junk():
    from zimage_krita.core.session import Entry, Record
    s = Session()
    s.history = [Entry(Record("a fox", 7, 4, 64, 96, "tiny", "a fox (7)", "layer"),
                       mode="img2img", strength=0.4, seamless=True)]
    t = Session()
    t.load_history(s.history_json())
    assert t.history[0].to_dict() == s.history[0].to_dict()
    assert t.entry_for_layer("a fox (7)").recall() == {
        "prompt": "a fox", "width": 64, "height": 96, "steps": 4, "seed": 7,
        "seed_random": False, "mode": "img2img", "strength": 0.4, "seamless": True}
    for junk in ("", "not json", "{}", '[1, {"record": {}}, {"record": {"seed": "x"}}]'):
        t.load_history(junk)
        assert t.history == []


def test_start_local_engine_with_a_wrong_python_is_a_message(tmp_path):
    s = Session()
    assert not s.start_local(str(tmp_path / "no-python"), str(tmp_path), "model",
                             "tcp://127.0.0.1:5555")
    assert s.notice.startswith("The image engine is not running.")
    assert "engine Python not found" in s.notice and s.process is None and s.link is None


def test_layer_pixels_crop_the_padding_and_take_the_selection_as_alpha():
    class Img:
        width, height, seed = 64, 64, 1
        rgb = bytes(i % 251 for i in range(64 * 64 * 3))

        def to_rgb_bytes(self):
            return self.rgb

    mask = bytes([0, 255] * (5 * 3 // 2) + [0])
    w, h, bgra = pixels.layer_pixels(Img(), (5, 3), True, mask)
    assert (w, h) == (5, 3)
    assert pixels.bgra_to_rgb(bgra, 5, 3) == pixels.crop(Img.rgb, 64, 64, 3, 5, 3)
    assert bgra[3::4] == mask
    w, h, bgra = pixels.layer_pixels(Img(), (5, 3), False, mask)    # a preset size: as is
    assert (w, h) == (64, 64) and bgra[3::4] == b"\xff" * (64 * 64)
