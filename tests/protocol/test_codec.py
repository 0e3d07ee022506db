"""Wire codec and message validation, without sockets."""

from __future__ import annotations

import json
import math
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import CODES, ProtocolError
from protocol.messages import DEFAULT_LIMITS, Limits, validate_params, validate_request
from protocol.png import add_text, encode_png, png_size, read_text
from protocol.wire import SIGNATURE, decode_header, encode, split_frames

SESSION = "s" * 32


def submit(params=None, **kw):
    return {"type": "submit", "session": SESSION, "job_id": "job-1",
            "params": params if params is not None else {"prompt": "a fox"}, **kw}


def test_round_trip_submit_fills_defaults():
    frames = encode(submit({"prompt": "a fox", "width": 512, "height": 768, "seed": 3}))
    assert frames[0] == SIGNATURE == b"ZIE1"
    header, blobs = split_frames(frames)
    msg = validate_request(header, blobs)
    p = msg["params"]
    assert (p["width"], p["height"], p["steps"], p["seed"], p["num_images"]) == (512, 768, 8, 3,
                                                                                 1)
    assert msg["want"] == {"result_format": "raw", "preview_every": 1, "preview_max_side": 256}
    assert msg["deadline_ms"] == DEFAULT_LIMITS.default_deadline_ms
    assert "init_image" not in p and "guidance" not in p and "negative_prompt" not in p


def test_round_trip_every_client_message():
    for h in ({"type": "hello", "versions": [1], "client": {"name": "b", "version": "1"},
               "resume_jobs": ["a", "b"]},
              {"type": "cancel", "job_id": "a"}, {"type": "cancel", "all": True},
              {"type": "status"}, {"type": "status", "job_ids": ["x"]},
              {"type": "fetch", "job_id": "a"}, {"type": "ping"}, {"type": "bye"}):
        header, blobs = split_frames(encode({"session": SESSION, **h}))
        assert validate_request(header, blobs)["type"] == h["type"]


def test_unicode_prompt_and_unknown_fields_ignored():
    header, blobs = split_frames(encode(submit({"prompt": "ein Fuchs 🦊 im Schnee",
                                                "future_field": [1, 2]}, extra={"x": 1})))
    msg = validate_request(header, blobs)
    assert msg["params"]["prompt"] == "ein Fuchs 🦊 im Schnee"
    assert "future_field" not in msg["params"] and "extra" not in msg


@pytest.mark.parametrize("params,field", [
    ({"prompt": "x", "width": 250}, "params.width"),
    ({"prompt": "x", "height": 4096}, "params.height"),
    ({"prompt": "x", "steps": 8.0}, "params.steps"),
    ({"prompt": "x", "seed": 2**63}, "params.seed"),
    ({"prompt": "x", "seed": "1"}, "params.seed"),
    ({"prompt": "x", "num_images": 0}, "params.num_images"),
    ({"prompt": "   "}, "params.prompt"),
    ({"prompt": 5}, "params.prompt"),
    ({}, "params.prompt"),
    ({"prompt": "x", "guidance": -1}, "params.guidance"),
    ({"prompt": "x", "tile": "xyz"}, "params.tile"),
    ({"prompt": "x", "mask": "m"}, "params.mask"),
    ({"prompt": "x", "control_type": "canny"}, "params.control_type"),
])
def test_invalid_params_name_the_field(params, field):
    header, blobs = split_frames(encode(submit(params)))
    with pytest.raises(ProtocolError) as e:
        validate_request(header, blobs)
    assert e.value.code == "invalid_params" and e.value.field == field


def test_non_finite_floats_are_refused_everywhere():
    lim = Limits()
    for v in (math.nan, math.inf, -math.inf):
        with pytest.raises(ProtocolError) as e:
            validate_params({"prompt": "x", "guidance": v}, [], lim)
        assert e.value.field == "params.guidance"
    for text in (b'{"a":NaN}', b'{"a":-Infinity}', b'{"a":1e400}'):
        with pytest.raises(ProtocolError) as e:
            decode_header(text)
        assert e.value.code == "bad_request"
    with pytest.raises(ValueError):
        encode({"x": math.nan})   # we never send NaN either


def test_image_params_with_blobs():
    png = encode_png(16, 16, bytes(16 * 16 * 3))
    h = submit({"prompt": "x", "init_image": "init", "strength": 0.4, "mask": "m",
                "control_image": "c", "control_type": "depth", "tile": "xy"},
               blobs=[{"name": "init", "mime": "image/png", "bytes": len(png)},
                      {"name": "m", "mime": "application/x-raw", "bytes": 256, "width": 16,
                       "height": 16, "channels": 1},
                      {"name": "c", "mime": "image/png", "bytes": len(png)}])
    header, blobs = split_frames(encode(h, [png, bytes(256), png]))
    p = validate_request(header, blobs)["params"]
    assert p["strength"] == 0.4 and "control_scale" not in p and p["tile"] == "xy"


@pytest.mark.parametrize("descs,blobs,code,field", [
    ([{"name": "a", "mime": "image/png", "bytes": 3}], [], "bad_request", "blobs"),
    ([], [b"abc"], "bad_request", "blobs"),
    ([{"name": "a", "mime": "image/png", "bytes": 4}], [b"abc"], "bad_request", "blobs[0].bytes"),
    ([{"name": "A!", "mime": "image/png", "bytes": 3}], [b"abc"], "bad_request", "blobs[0].name"),
    ([{"name": "a", "mime": "image/gif", "bytes": 3}], [b"abc"], "bad_request", "blobs[0].mime"),
    ([{"name": "a", "mime": "image/png", "bytes": 3}] * 2, [b"abc"] * 2, "bad_request",
     "blobs[1].name"),
    ([{"name": f"b{i}", "mime": "image/png", "bytes": 1} for i in range(9)], [b"x"] * 9,
     "too_large", "blobs"),
    ([{"name": "a", "mime": "image/png", "bytes": 33 * 2**20}], [b"x"], "too_large",
     "blobs[0].bytes"),
    ([{"name": "a", "mime": "application/x-raw", "bytes": 3, "width": 1, "height": 1,
       "channels": 4}], [b"abc"], "bad_request", "blobs[0].bytes"),
])
def test_blob_table_must_match_frames(descs, blobs, code, field):
    header, got = split_frames(encode(submit(blobs=descs), blobs))
    with pytest.raises(ProtocolError) as e:
        validate_request(header, got)
    assert (e.value.code, e.value.field) == (code, field)


@pytest.mark.parametrize("frames,code,field", [
    ([b"ZIE1"], "bad_request", "frames"),
    ([b"HTTP", b"{}"], "bad_request", "signature"),
    ([b"ZIE7", b"{}"], "unsupported_version", "signature"),
    ([b"ZIE1", b"not json"], "bad_request", "header"),
    ([b"ZIE1", b"\xc3\x28"], "bad_request", "header"),
    ([b"ZIE1", b"[]"], "bad_request", "header"),
    ([b"ZIE1", b'{"a":1,"a":2}'], "bad_request", "header"),
    ([b"ZIE1", b"[" * 100000], "too_large", "header"),
    ([b"ZIE1", b"[" * 30000 + b"]" * 30000], "bad_request", "header"),
    ([b"ZIE1", b'{"a":' + b"1" * 100 + b"}"], "bad_request", "header"),
    ([b"ZIE1", b'{"a":[[[[[[[[[1]]]]]]]]]}'], "bad_request", "header"),
])
def test_frame_level_rejections(frames, code, field):
    with pytest.raises(ProtocolError) as e:
        split_frames(frames)
    assert (e.value.code, e.value.field) == (code, field)


def test_structure_errors_are_bad_request():
    for h, field in (({"type": "nope", "session": SESSION}, "type"),
                     ({"type": "ping", "session": "short"}, "session"),
                     ({"type": "ping"}, "session"),
                     ({"type": "submit", "session": SESSION, "params": {}}, "job_id"),
                     ({"type": "fetch", "session": SESSION, "job_id": "a" * 65}, "job_id"),
                     ({"type": "status", "session": SESSION, "job_ids": ["a"] * 257}, "job_ids"),
                     ({"type": "hello", "session": SESSION, "versions": "1"}, "versions")):
        with pytest.raises(ProtocolError) as e:
            validate_request(h, [])
        assert (e.value.code, e.value.field) == ("bad_request", field), h


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                      st.text(max_size=30))
json_doc = st.recursive(json_leaf, lambda ch: st.lists(ch, max_size=5) |
                        st.dictionaries(st.text(max_size=10), ch, max_size=5), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.binary(max_size=300), max_size=6))
def test_decoder_raises_only_protocol_errors_on_bytes(frames):
    try:
        header, blobs = split_frames(frames)
        validate_request(header, blobs)
    except ProtocolError as e:
        assert e.code in CODES


@settings(max_examples=300, deadline=None)
@given(doc=json_doc, kind=st.sampled_from(["submit", "hello", "cancel", "status", "fetch",
                                           "ping", "bye"]), params=json_doc)
def test_validator_raises_only_protocol_errors_on_any_json(doc, kind, params):
    header = {"type": kind, "session": SESSION, "job_id": "j", "params": params}
    if isinstance(doc, dict):
        header.update(doc)
    try:
        text = json.dumps(header).encode()
    except ValueError:
        return
    try:
        h, blobs = split_frames([SIGNATURE, text])
        validate_request(h, blobs)
    except ProtocolError as e:
        assert e.code in CODES and e.message


def test_png_encoder_round_trip():
    from PIL import Image
    import io
    w, h = 7, 5
    rgb = bytes((x * 31 + y * 7 + c) % 256 for y in range(h) for x in range(w) for c in range(3))
    data = encode_png(w, h, rgb, text={"parameters": '{"prompt": "a fox"}', "Comment": "ü 🦊"})
    assert png_size(data) == (w, h)
    im = Image.open(io.BytesIO(data))
    assert im.size == (w, h) and im.mode == "RGB" and im.tobytes() == rgb
    assert im.info["parameters"] == '{"prompt": "a fox"}'
    assert read_text(data) == {"parameters": '{"prompt": "a fox"}', "Comment": "ü 🦊"}
    again = add_text(encode_png(w, h, rgb), {"k": "v"})
    assert read_text(again) == {"k": "v"} and Image.open(io.BytesIO(again)).tobytes() == rgb
    # chunks carry valid CRCs (Pillow verifies them on load, zlib here explicitly)
    assert zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big")


def test_control_inpaint_needs_no_control_map_but_other_types_do():
    png = b"\x89PNG fake"
    blobs = [{"name": "img", "mime": "image/png", "bytes": len(png)},
             {"name": "m", "mime": "image/png", "bytes": len(png)}]
    base = {"prompt": "a door", "width": 64, "height": 64, "init_image": "img", "mask": "m"}
    lim = Limits(min_side=64)
    out = validate_params({**base, "control_type": "inpaint", "control_scale": 0.5}, blobs, lim)
    assert out["control_type"] == "inpaint" and out["control_scale"] == 0.5
    from protocol.messages import required_capabilities
    assert ("control_type", ("control.inpaint", "control")) in required_capabilities(out)
    with pytest.raises(ProtocolError) as e:
        validate_params({**base, "control_type": "depth"}, blobs, lim)
    assert e.value.field == "params.control_type"


def test_typed_request_round_trip_and_seed_range():
    from protocol.request import MAX_SEED, GenerateRequest, random_seed
    req = GenerateRequest.from_params({"prompt": "fox", "width": 512, "num_images": 4})
    assert (req.width, req.height, req.steps, req.seed) == (512, 1024, 8, None)
    assert req.to_params() == {"prompt": "fox", "width": 512, "height": 1024, "steps": 8,
                               "seed": None, "num_images": 4}
    seeded = req.with_seed()
    assert 0 <= seeded.seed <= MAX_SEED - 3 and seeded.with_seed() is seeded
    assert all(random_seed(4) + 3 <= MAX_SEED for _ in range(1000))
    # a host app's smaller seed field (Blender's IntProperty): every image's seed fits it
    assert {random_seed(4, upper=4) for _ in range(500)} == {0, 1}
    assert {random_seed(1, upper=1) for _ in range(500)} == {0, 1}
    assert random_seed(2, upper=2**40, rng=random.Random(5)) == \
        random.Random(5).randrange(2**40)                 # repeatable with a seeded rng
    assert random_seed(1, upper=2**70) <= MAX_SEED      # never past the protocol's range
    with pytest.raises(ValueError):
        random_seed(4, upper=2)
    # the last image's seed (seed + num_images - 1) must fit too
    with pytest.raises(ProtocolError) as e:
        GenerateRequest.from_params({"prompt": "x", "seed": MAX_SEED, "num_images": 2})
    assert e.value.field == "params.seed"
    assert GenerateRequest.from_params({"prompt": "x", "seed": MAX_SEED}).seed == MAX_SEED
    with pytest.raises(ProtocolError) as e:
        GenerateRequest.from_params({"prompt": "x", "tile": "z"})
    assert e.value.field == "params.tile"


def test_job_state_is_one_vocabulary_and_its_own_wire_value():
    import json as _json
    from protocol.messages import JOB_STATES, TERMINAL_STATES, JobState
    assert JOB_STATES == ("queued", "running", "succeeded", "failed", "cancelled")
    assert TERMINAL_STATES == ("succeeded", "failed", "cancelled")
    assert _json.loads(_json.dumps({"state": JobState.CANCELLED})) == {"state": "cancelled"}
    assert JobState("running") is JobState.RUNNING and not JobState.PENDING.terminal
