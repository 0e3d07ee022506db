"""Live mode (issue 14): the built zip in real headless Blender 5.0.1 against a stand-in engine
over loopback whose steps take a fixed time (0.1 s) and whose result is one colour hashed
from its input image, so the frame on screen says which capture it came from."""

from __future__ import annotations

import pytest

from blender_harness import check, have_bpy, run_scenarios, start_standin

pytestmark = [pytest.mark.blender,
              pytest.mark.skipif(not have_bpy(), reason="needs bpy (pip install bpy==5.0.1)")]

SCENARIOS = ["install", "live_follows_the_scene", "live_sees_what_the_camera_sees",
             "live_on_an_engine_without_live_keys", "live_stops_on_disconnect_and_file_load"]


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    engine = start_standin(0.1, echo_hash=1)
    pre_live = start_standin(0.1, echo_hash=1, pre_live=1)
    try:
        return run_scenarios(addon_zip["path"], SCENARIOS, tmp_path_factory.mktemp("blender"),
                             timeout=400, script="blender_scenarios_live.py",
                             engine=engine.address, pre_live=pre_live.address)
    finally:
        engine.stop()
        pre_live.stop()


def test_twenty_quick_moves_newest_frame_wins(results):
    r = check(results, "live_follows_the_scene")
    assert r["handler_on"] and r["timer_on"] and r["draw_handler_on"], r
    assert r["sent"] == 20, r
    # never more than one frame running and one waiting, as the engine reports them
    assert r["peak"]["running"] <= 1 and r["peak"]["queued"] <= 1, r
    assert r["ctrl_peak"]["running"] <= 1 and r["ctrl_peak"]["queued"] <= 1, r
    assert r["finished_stale"] <= 1, r          # >= 18 of the 19 stale frames never finished
    assert r["superseded"] >= 18, r
    # the frame on screen is the final scene's
    assert r["shown_frame_is_last"] and r["final_capture_matches"], r
    assert r["shown_colour"] == r["expected_colour"], r
    assert r["live_images"] == ["Z-Image Live"], r
    # no growing memory: 14 more frames of 512x288 (2.4 MB as floats each) leave no trace
    assert r["rss_growth_mib_frames_5_to_19"] < 16, r
    assert r["undo_steps_added"] == [] and r["history"] == 0, r


def test_keep_stores_the_frame_like_a_concept_result(results):
    r = check(results, "live_follows_the_scene")["kept"]
    assert r["kind"] == "concept" and r["packed"] and r["history"] == 1, r
    assert r["steps"] == 4 and r["seed"] == 42, r
    assert r["live_images"] == ["Z-Image Live"], r


def test_toggling_off_leaves_nothing_behind(results):
    r = check(results, "live_follows_the_scene")["off"]
    assert r == {"state": True, "handler": False, "timer": False, "runtime_live": False,
                 "live_images": ["Z-Image Live"]}, r


def test_edits_the_camera_sees_start_a_frame_and_a_selection_does_not(results):
    r = check(results, "live_sees_what_the_camera_sees")["touched"]
    assert r == {"select": False, "material_colour": True, "light_energy": True,
                 "camera_move": True, "camera_lens": True, "mesh_edit": True}, r


def test_an_engine_without_live_keys_gets_the_stale_frames_cancelled(results):
    r = check(results, "live_on_an_engine_without_live_keys")
    assert not r["caps_have_live"], r
    assert r["shown_is_last"] and r["colour_ok"], r


def test_disconnect_and_loading_a_file_stop_live(results):
    r = check(results, "live_stops_on_disconnect_and_file_load")
    assert r["after_disconnect"]["had_jobs"] >= 1, r
    for key in ("after_disconnect", "after_load"):
        assert r[key]["state"] and not r[key]["handler"] and not r[key]["timer"], r
