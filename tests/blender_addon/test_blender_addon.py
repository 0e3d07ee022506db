"""The built extension in real Blender (bpy 5.0.1, headless), against real engines on loopback
running the stand-in pipeline (deterministic, seed-derived pixels).

One Blender subprocess runs every scenario (blender_scenarios.py) in order; each test below
checks one scenario's facts. Scenario order matters only in that later ones reuse the scene.
"""

from __future__ import annotations

import json
import sys

import pytest

from blender_harness import ROOT, check, free_port, have_bpy, run_scenarios, start_standin
from protocol.messages import JobState

pytestmark = [pytest.mark.blender,
              pytest.mark.skipif(not have_bpy(), reason="needs bpy (pip install bpy==5.0.1)")]

SCENARIOS = ["install", "disable_enable", "texture", "history_recall", "image_node_target",
             "preview_updates", "cancel", "encode_off_thread", "concept_img2img", "concept_depth",
             "panels_draw", "free_vram", "unsupported_size", "engine_not_running", "engine_killed",
             "local_engine"]


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    fast = start_standin(0.0)
    slow = start_standin(0.15)
    victim = start_standin(0.15)
    try:
        res = run_scenarios(addon_zip["path"], SCENARIOS, tmp_path_factory.mktemp("blender"),
                            engine=fast.address, slow=slow.address, victim=victim.address,
                            victim_pid=victim.pid, dead=f"tcp://127.0.0.1:{free_port()}",
                            local_port=free_port(), repo=ROOT)
    finally:
        for e in (fast, slow, victim):
            e.stop()
    res["_wheels"] = addon_zip["wheels"]
    return res


def expected_pattern(seed: int, width: int, height: int) -> list[int]:
    from engine.standin import pattern_image
    return [int(v) for v in pattern_image(seed, width, height).reshape(-1)]


def test_install_enables_the_built_zip(results):
    r = check(results, "install")
    assert r["result"] == ["FINISHED"] and r["enabled"] and r["runtime"]
    assert r["has_props"] and r["has_operator"] and r["vendored_client"]
    # main + 4 sub-panels in the 3D view and the image editor (+ Touch Up there), main +
    # Texture in the Shader Editor, + "Texture from Views" (3D view), + LoRAs (3D view, image)
    assert len(r["panels"]) == 16
    if results["_wheels"] and sys.platform.startswith("linux"):
        assert r["wheel_installed"], "the bundled pyzmq wheel was not installed"


def test_disable_removes_everything_and_reenable_works(results):
    r = check(results, "disable_enable")
    for key in ("disabled_props_gone", "disabled_ops_gone", "disabled_panels_gone",
                "disabled_timer_gone", "disabled_runtime_gone", "reenabled",
                "reenabled_runtime"):
        assert r[key], key


def test_texture_creates_material_with_the_engines_pixels(results):
    r = check(results, "texture")
    assert r["phase_after_submit"] == JobState.PENDING and r["phase"] == JobState.SUCCEEDED, r
    assert r["rgb8"] == expected_pattern(7, 64, 64)       # exact engine pixels, right way up
    img = r["image"]
    assert img["name"] == "red brick wall (7)" and img["packed"] and img["size"] == [64, 64]
    assert img["colorspace"] == "sRGB"
    assert img["props"]["zimage_seed"] == 7 and img["props"]["zimage_model"] == "stand-in"
    params = json.loads(r["png_text"]["parameters"])
    assert params == {"prompt": "red brick wall", "seed": 7, "steps": 3, "width": 64,
                      "height": 64, "model": "stand-in"}
    assert r["linked_base_color"] and r["tex_image"] == img["name"]
    assert r["user_material_intact"] and r["faces_on_new_slot"]
    assert r["after"]["cube_slots"] == ["Material", "red brick wall (7)"]
    assert r["history"][-1]["seed"] == 7 and r["history"][-1]["image"] == img["name"]
    assert r["message"] == "New material red brick wall (7) on Cube"   # the seed once


def test_history_recall_and_reapply(results):
    r = check(results, "history_recall")
    assert r["recalled"] == {"prompt": "red brick wall", "seed": 7, "steps": 3, "width": 64,
                             "height": 64, "seed_random": False}
    assert r["reapply_new_material"] and r["reapply_image"] == "red brick wall (7)"


def test_selected_image_node_gets_the_image(results):
    r = check(results, "image_node_target")
    assert r["phase"] == JobState.SUCCEEDED
    assert r["node_image"] == "mossy stone (11)" and r["no_new_material"]


def test_preview_updates_each_step(results):
    r = check(results, "preview_updates")
    assert r["phase"] == JobState.SUCCEEDED
    previews = r["previews"]
    assert len(previews) >= 3, previews
    assert len({p["sum"] for p in previews}) >= 2, previews      # the picture changes
    progress = [p["progress"] for p in previews]
    assert progress == sorted(progress) and progress[-1] > progress[0]
    assert any(p["status"].startswith("Denoising") for p in previews)


def test_cancel_is_immediate_and_applies_nothing(results):
    r = check(results, "cancel")
    assert r["phase_immediately"] == JobState.CANCELLED
    assert r["can_submit_immediately"] and r["poll_generate"]
    assert r["job_phase_later"] == JobState.CANCELLED and r["same_job"]
    assert r["before"] == r["after"]


def test_result_png_is_encoded_off_the_main_thread(results):
    r = check(results, "encode_off_thread")
    assert r["waits_while_encoding"] and r["threads"][0].startswith("zimage-png")
    assert r["phase"] == JobState.SUCCEEDED and r["applied"] and r["no_encoded_left"]
    assert r["encoding_when_cancelled"] and r["cancelled_phase"] == JobState.CANCELLED
    assert r["cancel_applied_nothing"]


def test_concept_from_camera_img2img_to_camera_background(results):
    r = check(results, "concept_img2img")
    assert r["render_restored"], (r["render_before"], r["render_after"])
    assert r["capture_size"] == [80, 64, 3] and r["capture_mean"] > 1
    assert r["sent_params"]["init_image"] == "init_image"
    assert 0 < r["sent_params"]["strength"] <= 1
    assert r["phase"] == JobState.SUCCEEDED, r["error"]
    assert r["bg_added"] and r["show_bg"] and r["bg_image"] == r["result_images"][0]
    assert r["size"] == [80, 64] and r["rgb8"] == expected_pattern(3, 80, 64)


def test_concept_depth_to_reference_image(results):
    r = check(results, "concept_depth")
    assert r["depth_size"] == [64, 64, 3]
    assert r["depth_max"] == 255 and r["depth_min"] == 0        # normalised to the visible range
    assert r["depth_centre"] > 0 and r["depth_corner"] == 0     # cube in the middle, sky around
    assert r["sent_params"]["control_type"] == "depth"
    assert r["phase"] == JobState.SUCCEEDED, r["error"]
    assert [(t, d) for t, d, _ in r["new_objects"]] == [("EMPTY", "IMAGE")]


def test_panels_draw_without_errors(results):
    r = check(results, "panels_draw")
    assert len(r["drawn"]) == 16
    assert {"zimage.generate_texture", "zimage.generate_concept", "zimage.start_engine",
            "zimage.free_vram", "zimage.history_recall", "zimage.show_image"} <= set(
        r["operators"]), r["operators"]


def test_free_vram_asks_the_engine_and_says_so(results):
    r = check(results, "free_vram")
    assert r["caps_have_unload"] and r["poll"] and r["result"] == ["FINISHED"]
    assert r["noticed"], r["notice"]


def test_unsupported_size_is_refused_before_sending(results):
    r = check(results, "unsupported_size")
    assert r["result"] == ["CANCELLED"] and r["code"] == "unsupported_size"
    assert "multiple of 16" in r["message"] and r["nothing_changed"] and r["no_job"]


def test_engine_not_running_is_explained(results):
    r = check(results, "engine_not_running")
    assert r["phase"] == JobState.FAILED and r["code"] == "engine_unreachable"
    assert "not running" in r["message"] and "Start" in r["message"]
    assert r["nothing_changed"] and r["can_submit"]


def test_engine_killed_mid_job(results):
    r = check(results, "engine_killed")
    assert r["phase"] == JobState.FAILED
    assert r["code"] in ("engine_lost", "engine_unreachable", "engine_unresponsive")
    assert "Nothing was applied" in r["message"] or "not running" in r["message"]
    assert r["nothing_changed"] and r["can_submit"] and r["poll_generate"]
    assert r["still_failed"]


def test_local_engine_started_owned_and_stopped(results):
    r = check(results, "local_engine")
    assert r["phase"] == JobState.SUCCEEDED and r["model"] == "stand-in", r.get("log")
    assert r["engine_alive_after_disable"] is False


def test_whole_blender_run_is_quick(results):
    assert results["_process"]["rc"] == 0, results["_process"]["stderr"]
    assert results["_process"]["seconds"] < 90
