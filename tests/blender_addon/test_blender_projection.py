"""Texturing from views in real headless Blender (bpy 5.0.1) with the built add-on zip,
against replay stand-in engines on loopback (replay_server.py: each job answers the render of
the object with its known texture T from the requested view). One Blender subprocess runs the
scenarios of projection_scenarios.py in order.

    .venv/bin/python -m pytest tests/blender_addon/test_blender_projection.py -q
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from blender_harness import HERE, ROOT, check, free_port, have_bpy, run_scenarios

pytestmark = [pytest.mark.blender,
              pytest.mark.skipif(not have_bpy(), reason="needs bpy (pip install bpy==5.0.1)")]

SCENARIOS = ["install", "project_one_view", "project_again_adds", "survives_save_and_reopen",
             "project_six_views",
             "selection_rules", "cancel_applies_nothing", "img2img_without_controlnet",
             "starts_before_the_welcome", "project_from_the_3d_view",
             "projection_is_one_undo_step", "another_file_mid_run", "linked_from_a_library",
             "material_slots_and_faces", "objects_change_mid_run"]


def start_replay(folder, caps: str | None = None):
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, str(HERE / "replay_server.py"), "--bind", address,
                             "--dir", str(folder)] + (["--caps", caps] if caps else []),
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    line = proc.stdout.readline().decode()
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"replay engine did not start: {line!r} "
                           f"{proc.stderr.read().decode()[-2000:]}")
    return proc, address


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    dirs = {k: tmp_path_factory.mktemp(k) for k in ("one", "six", "b", "rules", "vp")}
    servers = {k: start_replay(d) for k, d in dirs.items()}
    dirs["nc"] = tmp_path_factory.mktemp("nc")
    servers["nc"] = start_replay(dirs["nc"], "txt2img,img2img,inpaint")
    try:
        res = run_scenarios(addon_zip["path"], SCENARIOS, tmp_path_factory.mktemp("blender"),
                            timeout=600, script="projection_scenarios.py",
                            replay1=servers["one"][1], dir1=dirs["one"],
                            replay6=servers["six"][1], dir6=dirs["six"],
                            replay_b=servers["b"][1], dir_b=dirs["b"],
                            rules=servers["rules"][1], nocontrol=servers["nc"][1],
                            dir_nc=dirs["nc"], replay_vp=servers["vp"][1],
                            dir_vp=dirs["vp"])
    finally:
        for proc, _ in servers.values():
            proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
    return res


def test_round_trip_one_view(results):
    r = check(results, "project_one_view")
    assert r["run"]["phase"] == "succeeded", r["run"]
    c = r["compare"]
    print("one view:", c, r["run_seconds"], "s")
    # what the view sees comes back: PSNR >= 30 dB over >= 95 % of the visible pixels (the
    # outline pixels, where the pixel grid decides between object and background, left out)
    assert c["inner_fraction"] >= 0.95, c
    assert c["psnr_inner"] >= 30.0, c
    assert c["both"] >= 0.99 * c["visible"], c           # nothing visible lost its texture
    # both objects got a new UV map, a new material and a packed image with its coverage
    assert r["uv_maps"] == {"Sphere": ["Z-Image UV"], "Suzanne": ["Z-Image UV"]}
    assert all(len(m) == 2 for m in r["materials"].values()), r["materials"]
    assert r["image"]["size"] == [1024, 1024] and r["image"]["packed"]
    assert r["image"]["coverage"] and r["image"]["seed"] == 3
    assert "new UV map (Smart UV Project) on Sphere, Suzanne" in r["run"]["message"]
    # the request: depth control (the stand-in has a ControlNet), near bright, far dark
    assert r["request"]["control_type"] == "depth" and r["request"]["width"] == 512
    d = r["depth"]
    assert d["max"] == 255 and d["min_visible"] <= 5 and d["background_max"] == 0, d
    assert [h[2] for h in r["history"]] == ["texture", "texture"]
    assert r["reapply"] == ["FINISHED"]
    image, recorded, new_slots = r["reapply_image"]
    assert image == recorded and new_slots == 1


def test_round_trip_six_views(results):
    r = check(results, "project_six_views")
    assert r["run"]["phase"] == "succeeded", r["run"]
    print("six views: coverage", r["coverage"], "exterior", r["exterior"],
          "coverage of exterior", r["coverage_of_exterior"], "enclosed", r["enclosed"],
          "covered", r["enclosed_covered"], "deep", r["deep"], "covered", r["deep_covered"],
          "psnr", r["psnr_covered"])
    # the surface texels are those a camera can see at all (Blender's ray casting decides:
    # some ray from the texel escapes); ~3 % of Suzanne's texels lie inside her head, where her
    # eyeballs sink in, and no view outside can reach them
    assert r["coverage_of_exterior"] >= 0.98, r
    assert r["coverage"] >= 0.95, r
    # what no view can see receives nothing beyond the depth test's tolerance band
    assert r["deep"] > 100 and r["deep_covered"] == 0, r
    assert r["psnr_covered"] >= 28.0, r["psnr_covered"]
    for v in r["views"]:
        assert v["psnr_inner"] >= 28.0, v


def test_later_views_inpaint_the_texture_so_far(results):
    r = check(results, "project_six_views")
    assert r["blobs"][0] == ["control_image"]
    for k in range(1, 6):
        assert r["blobs"][k] == ["control_image", "init_image", "mask"], r["blobs"]
        assert r["requests"][k]["control_type"] == "depth"
        assert r["requests"][k]["strength"] == 1.0
    assert len({q["seed"] for q in r["requests"]}) == 1        # one seed for all views
    # per-view words from each camera's direction (V0..V5: front, right, back, left, top,
    # bottom)
    assert [q["prompt"].rsplit(", ", 1)[1] for q in r["requests"]] == [
        "front view", "right side view", "back view", "left side view", "top view",
        "bottom view"]


def test_views_agree(results):
    agree = check(results, "project_six_views")["agree"]
    assert [a["k"] for a in agree] == [1, 2, 3]
    for a in agree:
        print("views agree:", a)
        # request k's input image = Blender's render of the texture baked from views < k ...
        assert a["covered_pixels"] > 2000 and a["psnr_init_vs_render"] >= 30.0, a
        # ... and its mask is white exactly where that texture is empty or poorly covered
        # (outside a 2 px band at the silhouette)
        assert a["mask_white"] > 2000, a
        assert a["mask_mismatch_fraction"] <= 0.01, a
        assert a["mask_outside_object"] == 0, a


def test_selection_rules(results):
    r = check(results, "selection_rules")
    assert r["only_lamp"] == ["CANCELLED"] and not r["only_lamp_run"]
    assert "Select one or more mesh objects" in r["only_lamp_error"]
    assert r["only_empty"] == ["CANCELLED"] and not r["only_empty_run"]
    assert "no faces" in r["only_empty_error"]
    assert r["mode_after"] == "OBJECT"
    assert r["phase"] == "succeeded" and r["requests"] == 1
    assert r["existing_uv_untouched"] and r["uv_names"]["WithUV"] == r["uv_names"]["before"]
    assert r["uv_names"]["Bare"] == ["Z-Image UV"]
    assert len(r["images"]) == 2                                # WithUV, Bare (+ twin)
    assert r["twin_material"] == r["bare_material"]
    m = r["message"]
    assert "new UV map (Smart UV Project) on Bare" in m
    assert "Bare twin shares Bare's mesh and texture" in m
    assert "skipped (not meshes): Lamp" in m


def test_cancel_applies_nothing(results):
    r = check(results, "cancel_applies_nothing")
    assert r["views"] == 5 and r["reached_view"] >= 1
    assert r["phase"] == "cancelled"
    assert r["nothing_applied"], r["diff"]
    assert r["previews_left"] == []                 # this run's view previews are gone too


def test_panel_shows_settings_progress_per_view_and_previews(results):
    r = check(results, "cancel_applies_nothing")
    run = r["panel_running"]
    assert run["operators"] == ["zimage.project_cancel"]
    assert run["progress"] and run["progress"][0].startswith(f"View {r['reached_view'] + 1}/5")
    assert run["icons"] == r["reached_view"]          # one preview per view that arrived
    idle = r["panel_idle"]
    assert idle["operators"] == ["zimage.project_all", "zimage.project_view"]
    assert {"texture_size", "image_size", "sharpness", "use_depth", "views_source",
            "views_around", "view_above", "view_words"} <= set(idle["props"])
    assert r["can_submit"]


def test_projecting_again_adds_to_the_texture(results):
    r = check(results, "project_again_adds")
    assert r["phase"] == "succeeded" and r["uv_maps"] == ["Z-Image UV"]    # no second UV map
    assert r["kept_texels"] > 10000 and r["kept_equal"]
    assert r["new_texels"] > 10000 and r["new_grey"] < 2 / 255


def test_without_controlnet_the_first_view_is_img2img_from_a_shaded_capture(results):
    r = check(results, "img2img_without_controlnet")
    assert r["phase"] == "succeeded", r
    assert r["request"]["blobs"] == ["init_image"], r["request"]
    assert "control_type" not in r["request"]["params"]
    assert r["strength"] == 0.45 and r["init_size"] == [512, 512, 3]
    assert r["init_centre_vs_corner"] > 30              # the object is in the capture


def test_a_run_started_before_the_welcome_waits_for_the_engine(results):
    r = check(results, "starts_before_the_welcome")
    assert r["connection_before"] == "disconnected"
    assert r["phase"] == "succeeded", r["message"]
    assert r["blobs"] == [["init_image"]]       # the engine's real caps: no ControlNet


def test_project_from_the_3d_view(results):
    # a stand-in viewport (background Blender has no window) at 640x480 looking through one
    # camera while the scene camera looks from behind: the view's aspect and matrices are used
    r = check(results, "project_from_the_3d_view")
    assert r["run"]["phase"] == "succeeded", r["run"]
    w, h = r["size"]
    assert w > h and r["request_size"] == [w, h]
    c = r["compare"]
    print("from the 3D view:", c)
    assert c["inner_fraction"] >= 0.95 and c["psnr_inner"] >= 30.0, c


def test_projection_is_one_undo_step(results):
    r = check(results, "projection_is_one_undo_step")
    assert r["phase"] == "succeeded"
    before, after = r["before"], r["after"]
    assert after["uv_maps"] == ["Z-Image UV"] and before["uv_maps"] == []
    assert len(after["images"]) == len(before["images"]) + 2          # texture + coverage
    assert after["history"] == before["history"] + 1
    assert r["new_steps"] == ["Z-Image: texture from views"], r["new_steps"]
    assert r["after_undo"] == before
    assert r["after_redo"] == after


def test_another_file_opened_mid_run_gets_nothing(results):
    r = check(results, "another_file_mid_run")
    for when, st in r["phases"].items():
        print(when, st["caught"], st["last"])
        assert st["caught"] == when, (when, st)          # the file opened in that phase
        assert st["ended"] and st["last"]["phase"] == "cancelled", (when, st)
        assert "another file" in st["last"]["message"], (when, st)
        # the opened file is as it was saved: no UV map, material, texture or history
        assert st["uv_maps"] == [] and st["materials"] == [], (when, st)
        assert st["images"] == st["images_at_open"], (when, st)
        assert st["history"] == st["history_at_open"], (when, st)


def test_objects_linked_from_a_library_are_skipped(results):
    r = check(results, "linked_from_a_library")
    linked, local = r["names"]
    assert linked == "Suzanne [statues.blend]" and local == "Suzanne"
    # alone: refused before anything is sent, saying why
    assert r["only_linked"] == ["CANCELLED"] and not r["only_linked_run"]
    assert "linked from a library" in r["only_linked_error"], r
    # with a local object of the same name: that one is textured, the linked one untouched
    assert r["phase"] == "succeeded", r["message"]
    assert "skipped (linked from a library): Suzanne [statues.blend]" in r["message"]
    assert r["linked_after"]["uv"] == r["linked_after"]["before"]
    assert r["linked_after"]["slots"] == 0
    assert r["local_after"]["uv"] == ["Z-Image UV"] and r["local_after"]["material"]
    # Generate Texture refuses it too, before sending
    assert r["generate_linked"] == ["CANCELLED"]
    assert "statues.blend" in r["generate_linked_error"] and "Make Local" in \
        r["generate_linked_error"], r["generate_linked_error"]


def test_texture_and_coverage_survive_save_and_reopen(results):
    r = check(results, "survives_save_and_reopen")
    assert r["found"] == [True, True], "the texture or its coverage was not saved"
    assert r["packed"] == [True, True] and r["same_pixels"] == [True, True]
    # projecting again after reopening adds to the texture: what the new view does not see stays
    assert r["phase"] == "succeeded"
    assert r["kept_texels"] > 10000 and r["kept_equal"]


def test_material_slots_and_edit_mode_faces(results):
    r = check(results, "material_slots_and_faces")
    # Object Mode: the active slot's faces (slot 1) take the new material (slot 2)
    first = r["object_mode"]
    assert first["phase"] == "succeeded"
    assert first["faces"] == [0, 0, 0, 2, 2, 2], first
    assert first["slots"][:2] == ["Paint A", "Paint B"] and len(first["slots"]) == 3
    # Edit Mode with faces 0 and 5 selected: exactly those take the next one (slot 3)
    second = r["edit_mode"]
    assert second["phase"] == "succeeded"
    assert second["faces"] == [3, 0, 0, 2, 2, 3] and second["slots"] == 4, second


def test_object_deleted_or_edited_mid_run(results):
    r = check(results, "objects_change_mid_run")
    assert r["caught"] == "generating"
    assert r["phase"] == "succeeded", r["message"]
    assert "Textured Kept" in r["message"] and len(r["images"]) == 1
    assert "Deleted (deleted or renamed while texturing)" in r["message"], r["message"]
    assert "Edited (its mesh was edited while texturing)" in r["message"], r["message"]
    assert len(r["kept_material"]) == 1                  # the new one
    assert r["edited"]["slots"] == 0 and r["edited"]["uv"] == ["UVMap"]   # untouched
