"""Touch-up masks and compositing, the prompt limit, seamless and inpaint params, and engine
errors that name their field (bpy-free)."""

from __future__ import annotations

import pytest

from blender_addon.core import requests as rq
from blender_addon.core import touchup
from blender_addon.core.errors import explain
from blender_addon.core.jobs import JobBoard
from protocol.messages import JobState


def test_composite_keeps_every_pixel_outside_the_mask():
    w, h = 5, 3
    original = bytes(range(w * h * 3))
    repainted = bytes(255 - v for v in original)
    mask = bytes([0, 255, 128, 0, 0] * h)
    out = touchup.composite(original, repainted, mask)
    for i, m in enumerate(mask):
        px, old, new = out[3 * i:3 * i + 3], original[3 * i:3 * i + 3], repainted[3 * i:3 * i + 3]
        if m == 0:
            assert px == old
        elif m == 255:
            assert px == new
        else:
            assert all(min(a, b) <= p <= max(a, b) for p, a, b in zip(px, old, new))
    with pytest.raises(ValueError):
        touchup.composite(original, repainted, mask[:-1])


def test_masks_from_alpha_and_from_a_grey_image():
    w, h = 2, 2
    # Blender's floats, rows bottom-up: the bottom-left pixel is erased
    floats = [1, 1, 1, 1] * 4
    floats[3] = 0.0
    rgba = touchup.rgba_rows(floats, w, h)
    assert touchup.mask_from_alpha(rgba) == bytes([0, 0, 255, 0])     # top-down
    grey = touchup.mask_from_grey(bytes([255, 255, 255, 255, 0, 0, 0, 255]), 2, 1, 4, 2)
    assert grey == bytes([255, 255, 0, 0] * 2)
    assert touchup.is_empty(bytes(4)) and not touchup.is_empty(grey)


def test_prompt_over_the_welcome_limit():
    limits = rq.EngineLimits.from_welcome({"limits": {"max_prompt_chars": 10}})
    assert limits.max_prompt_chars == 10
    assert rq.prompt_problem("  0123456789  ", limits) is None
    assert "at most 10" in rq.prompt_problem("0123456789x", limits)
    assert rq.EngineLimits().max_prompt_chars == 4000            # the protocol's default
    err = explain("prompt_too_long", rq.prompt_problem("x" * 4001, rq.EngineLimits()))
    assert "4,001" in err.message and "Shorten" in err.hint


def test_tile_and_inpaint_params_need_the_capability():
    req = rq.build_request(rq.Settings("tiles", 64, 64, seed_random=False), rq.EngineLimits(),
                           {"txt2img", "tile"})
    assert rq.add_tile(req, "XY", {"tile"}).params["tile"] == "xy"
    assert "tile" not in rq.add_tile(rq.Request({}), "NONE", set()).params
    with pytest.raises(rq.RequestError) as exc:
        rq.add_tile(rq.Request({}), "X", {"txt2img"})
    assert exc.value.code == "capability_unavailable"
    r = rq.add_inpaint(rq.Request({}), b"img", b"mask", {"inpaint"})
    assert r.params == {"init_image": "init_image", "mask": "mask"}
    assert r.blobs == {"init_image": b"img", "mask": b"mask"}
    r = rq.add_inpaint(rq.Request({}), b"img", b"mask", {"control.inpaint"})
    assert r.params["control_type"] == "inpaint"
    with pytest.raises(rq.RequestError):
        rq.add_inpaint(rq.Request({}), b"img", b"mask", {"txt2img", "img2img"})


class Ev:
    def __init__(self, kind, job_id=None, data=None):
        self.kind, self.job_id, self.data, self.images = kind, job_id, data or {}, []


def test_an_engine_refusal_names_the_field_and_hints_at_it():
    board = JobBoard()
    board.connection = "connected"
    job = board.submit("texture", "j1", {"prompt": "x", "steps": 8})
    board.handle(Ev("error", "j1", {"code": "invalid_params", "field": "params.prompt",
                                    "message": "must be 1..4000 characters long, got 4001"}))
    assert job.phase == JobState.FAILED
    assert "prompt: must be 1..4000" in job.error.message
    assert job.error.hint == "Shorten the prompt."
