"""Requests and selection rules of a projection run (bpy-free)."""

from __future__ import annotations

import pytest

from blender_addon.core import projection_jobs as pjobs
from blender_addon.core import requests as rq

LIMITS = rq.EngineLimits()
S = pjobs.ProjectionSettings(prompt="old leather armour", width=512, height=512, steps=8,
                             seed=42, strength=0.5, control_scale=0.8)


def test_first_view_uses_depth_control_when_the_engine_has_it():
    r = pjobs.view_request(S, LIMITS, {"img2img", "inpaint", "control.depth"}, first=True,
                           words="front view", depth_png=b"D", init_png=b"I")
    assert r.params == {"prompt": "old leather armour, front view", "width": 512,
                        "height": 512, "steps": 8, "seed": 42, "num_images": 1,
                        "control_image": "control_image", "control_type": "depth",
                        "control_scale": 0.8}
    assert r.blobs == {"control_image": b"D"}


def test_first_view_without_controlnet_is_img2img_from_the_shaded_capture():
    r = pjobs.view_request(S, LIMITS, {"img2img", "inpaint"}, first=True, depth_png=b"D",
                           init_png=b"I")
    assert r.params["init_image"] == "init_image" and r.params["strength"] == 0.5
    assert r.blobs == {"init_image": b"I"} and "control_type" not in r.params
    off = pjobs.ProjectionSettings(**{**S.__dict__, "use_depth": False})
    r = pjobs.view_request(off, LIMITS, {"img2img", "control"}, first=True, init_png=b"I")
    assert "control_image" not in r.params


def test_later_views_inpaint_the_texture_so_far_with_depth():
    r = pjobs.view_request(S, LIMITS, {"img2img", "inpaint", "control"}, first=False,
                           words="back view", depth_png=b"D", init_png=b"T", mask_png=b"M")
    assert r.blobs == {"control_image": b"D", "init_image": b"T", "mask": b"M"}
    assert r.params["mask"] == "mask" and r.params["strength"] == 1.0
    assert r.params["control_type"] == "depth" and r.params["seed"] == 42
    assert r.params["prompt"].endswith("back view")
    r = pjobs.view_request(S, LIMITS, {"img2img", "inpaint"}, first=False, depth_png=b"D",
                           init_png=b"T", mask_png=b"M")
    assert r.blobs == {"init_image": b"T", "mask": b"M"}


@pytest.mark.parametrize("caps,first,code", [
    (set(), True, "capability_unavailable"),
    ({"img2img", "control.depth"}, False, "capability_unavailable"),
])
def test_missing_capabilities_are_refused_before_sending(caps, first, code):
    with pytest.raises(rq.RequestError) as e:
        pjobs.view_request(S, LIMITS, caps, first=first, depth_png=b"D", init_png=b"I",
                           mask_png=b"M")
    assert e.value.code == code


def test_bad_settings_are_refused():
    for bad, code in ((dict(prompt="  "), "invalid_params"), (dict(width=500), "unsupported_size"),
                      (dict(steps=0), "invalid_params")):
        s = pjobs.ProjectionSettings(**{**S.__dict__, **bad})
        with pytest.raises(rq.RequestError) as e:
            pjobs.view_request(s, LIMITS, {"control.depth", "inpaint"}, first=True,
                               depth_png=b"D")
        assert e.value.code == code
    with pytest.raises(rq.RequestError) as e:
        pjobs.view_request(S, LIMITS, {"control.depth", "inpaint"}, first=False, depth_png=b"D")
    assert e.value.code == "capture_failed"


def test_view_words_and_selection_rules():
    assert pjobs.view_words(4, True) == ["front view", "right side view", "back view",
                                         "left side view", "top view"]
    assert len(pjobs.view_words(6, False)) == 6
    targets, shared, skipped = pjobs.split_selection([
        ("Suzanne", "MESH", "Mesh.A"), ("Lamp", "LIGHT", "Light"), ("Suzanne.001", "MESH",
                                                                    "Mesh.A"),
        ("Cube", "MESH", "Mesh.B"), ("Camera", "CAMERA", "Cam")])
    assert targets == ["Suzanne", "Cube"] and shared == {"Suzanne": ["Suzanne.001"]}
    assert skipped == ["Lamp", "Camera"]
    text = pjobs.run_summary(["Suzanne", "Cube"], ["Cube"], shared, skipped, 0.987, 6)
    assert "6 views" in text and "99%" in text and "new UV map" in text and "Cube" in text
    assert "Suzanne.001 shares Suzanne's mesh" in text and "skipped (not meshes): Lamp" in text
    assert "linked" not in text
    text = pjobs.run_summary(["Cube"], [], {}, [], 0.5, 1, linked=["Statue", "Statue.001"])
    assert text.endswith("skipped (linked from a library): Statue, Statue.001")


def test_direction_words_for_cameras_of_a_collection():
    assert pjobs.direction_words(0, -5, 1) == "front view"
    assert pjobs.direction_words(5, 1, 1) == "right side view"
    assert pjobs.direction_words(0.5, 5, 0) == "back view"
    assert pjobs.direction_words(-5, 0, 2) == "left side view"
    assert pjobs.direction_words(0.1, 0, 6) == "top view"
    assert pjobs.direction_words(0, 0.1, -6) == "bottom view"
