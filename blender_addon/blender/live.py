"""Live mode: the concept image follows the scene (bpy glue; the bookkeeping is core.live).

While on: a depsgraph handler notes changes that alter what the camera sees; a timer (the
tests call tick(), timers do not fire in background mode) drains the engine's events, draws
the newest finished frame into the one image "Z-Image Live" (updated in place: no new
datablock, no undo step, no history entry) and, once the scene has been quiet for the
debounce, captures the camera at the live size and submits a frame with the live key, so the
engine drops the stale ones. A draw handler shows the frame in a corner of 3D viewports.
stop() removes every handler and timer and cancels the frames in flight; it runs when Live is
turned off, on disconnect, when another file opens and when the add-on is disabled.
"""

from __future__ import annotations

import logging
import time

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty

from ..core import live as core
from ..core import requests as rq
from . import capture, runtime

log = logging.getLogger(__name__)

LIVE_NAME = "Z-Image Live"
TICK = 0.02             # the timer's interval: the debounce and the display follow it closely
# what the camera sees: updates of other datablocks (the scene's own settings, images - the
# live image itself -, texts, UI) never start a frame
_IGNORED = ("Scene", "Image", "Text", "WindowManager", "Screen", "WorkSpace", "Brush",
            "Palette", "Library")


class ZIMAGE_PG_live(bpy.types.PropertyGroup):
    debounce_ms: IntProperty(name="Debounce (ms)", default=150, min=0, max=5000,
                             description="How long the scene must be still before a new "
                             "frame is made")
    size: EnumProperty(name="Live Size", default="512",
                       items=[("512", "512", "512 pixels on the long side (fastest)"),
                              ("768", "768", "768 pixels on the long side")],
                       description="The long side of live frames (the camera's aspect)")
    context: EnumProperty(name="Live From", default="IMG2IMG",
                          items=[("IMG2IMG", "Camera Colours", "Image to image from a quick "
                                  "render of the camera"),
                                 ("DEPTH", "Camera Depth", "Depth control from the camera "
                                  "(needs an engine with a depth ControlNet)")],
                          description="What each live frame is generated from")
    strength: FloatProperty(name="Live Strength", default=0.6, min=0.05, max=1.0,
                            description="How much a live frame may differ from the capture")
    steps: IntProperty(name="Live Steps", default=6, min=4, max=8,
                       description="Denoising steps of a live frame (fewer: sooner, rougher)")
    seed: IntProperty(name="Live Seed", default=42, min=0, max=2**31 - 1,
                      description="One fixed seed, so frames stay stable as the scene moves")
    overlay: BoolProperty(name="Viewport Overlay", default=True,
                          description="Show the live frame in a corner of the 3D viewport")
    overlay_size: FloatProperty(name="Overlay Size", default=0.3, min=0.05, max=1.0,
                                subtype="FACTOR",
                                description="The overlay's width, as a share of the viewport")
    overlay_opacity: FloatProperty(name="Overlay Opacity", default=0.9, min=0.0, max=1.0,
                                   subtype="FACTOR", description="The overlay's opacity")
    overlay_corner: EnumProperty(name="Corner", default="BOTTOM_RIGHT",
                                 items=[("BOTTOM_RIGHT", "Bottom Right", ""),
                                        ("BOTTOM_LEFT", "Bottom Left", ""),
                                        ("TOP_RIGHT", "Top Right", ""),
                                        ("TOP_LEFT", "Top Left", "")],
                                 description="Where the overlay sits in the viewport")


class _State:
    def __init__(self, scene_name: str, debounce_s: float):
        self.scene_name = scene_name
        self.ctrl = core.LiveController(debounce_s=debounce_s)
        self.capturing = False
        self.draw_handle = None
        self.image_data = None      # the ImageData of the frame on screen (for Keep)
        self.params: dict = {}      # the params of the frame on screen
        self.last_capture: bytes | None = None
        self.timings: list[dict] = []   # per shown frame: scene change -> shown (benchmark)
        self.view_key = None        # the 3D view's matrix, when the view is the source


_STATE: _State | None = None


def state() -> _State | None:
    return _STATE


def active() -> bool:
    return _STATE is not None


# ---- start / stop ----------------------------------------------------------------------------

def start(context) -> None:
    global _STATE
    if _STATE is not None:
        return
    scene = context.scene
    _STATE = _State(scene.name, scene.zimage_live.debounce_ms / 1000.0)
    rt = runtime.get()
    if rt is not None:
        rt.live = _STATE.ctrl
    if _on_depsgraph not in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.append(_on_depsgraph)
    try:
        _STATE.draw_handle = bpy.types.SpaceView3D.draw_handler_add(
            _draw_overlay, (), "WINDOW", "POST_PIXEL")
    except Exception:           # no GPU drawing (e.g. some headless builds): image only
        log.warning("Z-Image Live: no viewport overlay", exc_info=True)
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK)
    _STATE.ctrl.touch()         # the first frame shows the scene as it is


def stop(why: str = "Live turned off") -> None:
    """Cancel the frames in flight and remove every handler and timer. Idempotent."""
    global _STATE
    st, _STATE = _STATE, None
    while _on_depsgraph in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.remove(_on_depsgraph)
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    if st is None:
        return
    if st.draw_handle is not None:
        try:
            bpy.types.SpaceView3D.draw_handler_remove(st.draw_handle, "WINDOW")
        except Exception:
            pass
        st.draw_handle = None
    rt = runtime.get()
    ids = st.ctrl.stop()
    if rt is not None:
        if rt.live is st.ctrl:
            rt.live = None
        for job_id in ids:
            if rt.client is not None:
                try:
                    rt.client.cancel(job_id)
                except Exception:
                    pass
        if ids:
            rt.notice = f"Live stopped: {why}"
    _redraw()


# ---- scene changes ---------------------------------------------------------------------------

def _on_depsgraph(scene, depsgraph) -> None:
    st = _STATE
    if st is None or st.capturing or scene.name != st.scene_name:
        return
    try:
        for update in depsgraph.updates:
            idb = update.id
            if type(idb).__name__ in _IGNORED or getattr(idb, "bl_rna", None) is None:
                continue
            if isinstance(idb, bpy.types.Object):
                # a moved, edited or re-shaded object (not a selection change)
                if not (update.is_updated_transform or update.is_updated_geometry
                        or update.is_updated_shading):
                    continue
            st.ctrl.touch()     # the data of a mesh, material, light, camera, world ...
            return
    except Exception:           # never let a handler raise into Blender's update loop
        log.exception("Z-Image Live: depsgraph handler")


# ---- the timer -------------------------------------------------------------------------------

def tick():
    """The live timer: events in, the newest frame drawn, a due frame sent."""
    st = _STATE
    if st is None:
        return None
    from . import pump
    try:
        pump.tick()             # drains the client: live events reach st.ctrl (runtime.step)
    except Exception:
        log.exception("Z-Image Live: pump")
    try:
        _watch_view(st)
    except Exception:
        log.exception("Z-Image Live: watching the view")
    try:
        shown = st.ctrl.take()
        if shown is not None:
            _show(st, *shown)
    except Exception:
        log.exception("Z-Image Live: showing a frame")
    try:
        rt = runtime.get()
        if st.ctrl.due() and rt is not None and rt.connection == "connected":
            _send_frame(st, rt)
    except Exception as exc:
        log.exception("Z-Image Live: sending a frame")
        st.ctrl.error = str(exc)[:300]
        st.ctrl.changed_at = None       # do not retry in a loop; the next change retries
    return TICK


def _live_view(scene):
    """The 3D view to capture when the concept source is the current view and Blender has a
    window (never in background mode); else None: the camera."""
    if scene.zimage.concept_source != "VIEW":
        return None
    return capture.find_view3d(bpy.context)


def _watch_view(st: _State) -> None:
    """Navigating the view changes no datablock (no depsgraph update): compare its matrix."""
    scene = bpy.data.scenes.get(st.scene_name)
    view = _live_view(scene) if scene is not None else None
    if view is None:
        st.view_key = None
        return
    key = tuple(round(v, 5) for row in view[3].region_3d.view_matrix for v in row)
    if st.view_key is not None and key != st.view_key:
        st.ctrl.touch()
    st.view_key = key


def _send_frame(st: _State, rt) -> None:
    scene = bpy.data.scenes.get(st.scene_name)
    if scene is None:
        stop("the scene is gone")
        return
    s, lv = scene.zimage, scene.zimage_live
    st.ctrl.debounce_s = lv.debounce_ms / 1000.0
    welcome = rt.board.welcome
    limits, caps = rq.EngineLimits.from_welcome(welcome), rq.capabilities(welcome)
    view = _live_view(scene)
    source = "VIEW" if view is not None else "CAMERA"
    if view is None and scene.camera is None:
        st.ctrl.error = "The scene has no camera to follow."
        st.ctrl.changed_at = None
        return
    r = scene.render
    if view is not None:
        aspect = view[2].width / max(1, view[2].height)
    else:
        aspect = (r.resolution_x * r.pixel_aspect_x) / max(1e-6,
                                                           r.resolution_y * r.pixel_aspect_y)
    w, h = core.live_size(aspect, int(lv.size), limits.min_side, limits.max_side,
                          limits.side_multiple)
    mode = "depth" if lv.context == "DEPTH" else "img2img"
    t0 = time.perf_counter()
    st.capturing = True         # our own render changes settings: not a scene change
    try:
        if mode == "depth":
            png = capture.capture_depth(bpy.context, scene, source, w, h)
        else:
            png = capture.capture_color(bpy.context, scene, source, w, h, quick=True)
    finally:
        st.capturing = False
    capture_ms = (time.perf_counter() - t0) * 1000.0
    settings = rq.Settings(prompt=s.prompt, width=w, height=h, steps=lv.steps,
                           seed_random=False, seed=lv.seed, context=mode,
                           strength=lv.strength, control_scale=s.control_scale)
    request = rq.build_request(settings, limits, caps, init_png=png if mode == "img2img"
                               else None, depth_png=png if mode == "depth" else None)
    if "live" not in caps:      # an older engine: drop the stale frames ourselves
        for job_id in st.ctrl.stop():
            rt.client.cancel(job_id)
    job_id = rt.client.submit(request.params, request.blobs, result_format="raw",
                              preview_every=0, live=core.LIVE_KEY)
    st.ctrl.sent(job_id, capture_ms)
    st.ctrl.error = None
    st.last_capture = png
    st.params = dict(request.params)


def _show(st: _State, frame, img_data) -> None:
    """The newest frame into the one live image, in place."""
    w, h = int(img_data.width), int(img_data.height)
    image = bpy.data.images.get(LIVE_NAME)
    if image is None:
        image = bpy.data.images.new(LIVE_NAME, w, h, alpha=False)
        from .apply import show_in_image_editors
        show_in_image_editors(image, only_free=True)
    elif tuple(image.size) != (w, h):
        image.scale(w, h)
    image.pixels.foreach_set(_rgba_floats(img_data.to_rgb_bytes(), w, h))
    image.update()
    st.image_data = img_data
    now = time.monotonic()
    st.timings.append({"frame": frame.number, "changed_at": frame.changed_at,
                       "sent_at": frame.sent_at, "shown_at": now,
                       "capture_ms": frame.capture_ms, "compute_ms": frame.compute_ms})
    del st.timings[:-256]
    _redraw()


def _rgba_floats(rgb: bytes, w: int, h: int):
    try:
        import numpy as np
    except ImportError:         # Blender ships numpy; this is only a fallback
        from ..core import pixels
        return pixels.rgb8_to_rgba_floats(rgb, w, h)
    a = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1]    # Blender rows go bottom-up
    out = np.ones((h, w, 4), np.float32)
    out[..., :3] = a * np.float32(1.0 / 255.0)
    return out.ravel()


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else []):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "IMAGE_EDITOR"):
                area.tag_redraw()


# ---- viewport overlay ------------------------------------------------------------------------

def _draw_overlay() -> None:
    st = _STATE
    try:
        scene = bpy.context.scene
        lv = scene.zimage_live
        image = bpy.data.images.get(LIVE_NAME)
        if st is None or image is None or not lv.overlay or image.size[0] == 0:
            return
        import gpu
        from gpu_extras.batch import batch_for_shader
        region = bpy.context.region
        w = region.width * lv.overlay_size
        h = w * image.size[1] / image.size[0]
        pad = 12
        x = region.width - w - pad if "RIGHT" in lv.overlay_corner else pad
        y = region.height - h - pad if "TOP" in lv.overlay_corner else pad
        texture = gpu.texture.from_image(image)
        shader = gpu.shader.from_builtin("IMAGE_COLOR")
        batch = batch_for_shader(shader, "TRI_FAN", {
            "pos": ((x, y), (x + w, y), (x + w, y + h), (x, y + h)),
            "texCoord": ((0, 0), (1, 0), (1, 1), (0, 1))})
        gpu.state.blend_set("ALPHA")
        shader.bind()
        shader.uniform_float("color", (1.0, 1.0, 1.0, lv.overlay_opacity))
        shader.uniform_sampler("image", texture)
        batch.draw(shader)
        gpu.state.blend_set("NONE")
    except Exception:           # a draw callback must never raise
        log.debug("Z-Image Live overlay", exc_info=True)


# ---- operators and panel ---------------------------------------------------------------------

class ZIMAGE_OT_live(bpy.types.Operator):
    """Turn Live on or off: the concept image follows the scene through the camera"""
    bl_idname = "zimage.live"
    bl_label = "Live"
    bl_description = ("Live: while on, every change the camera sees makes a new quick image "
                      "(in \"Z-Image Live\" and the viewport corner); turn off to stop")
    bl_options = {"REGISTER"}      # no undo step: it changes nothing in the file

    def execute(self, context):
        if active():
            stop()
            return {"FINISHED"}
        rt = runtime.get()
        if rt is None:
            return {"CANCELLED"}
        if context.scene.camera is None and _live_view(context.scene) is None:
            self.report({"ERROR"}, "Live needs a scene camera to follow.")
            return {"CANCELLED"}
        if not context.scene.zimage.prompt.strip():
            self.report({"ERROR"}, "Write a prompt first.")
            return {"CANCELLED"}
        from .operators import ensure_engine
        try:
            ensure_engine(rt)
        except Exception as exc:
            self.report({"ERROR"}, f"Could not reach the engine: {exc}")
            return {"CANCELLED"}
        start(context)
        return {"FINISHED"}


class ZIMAGE_OT_live_keep(bpy.types.Operator):
    """Keep the live frame on screen as a concept result (history, PNG parameters)"""
    bl_idname = "zimage.live_keep"
    bl_label = "Keep"
    bl_description = "Store the current live frame like any concept result (history, PNG)"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _STATE is not None and _STATE.image_data is not None

    def execute(self, context):
        return {"FINISHED"} if keep(context) else {"CANCELLED"}


def keep(context) -> str | None:
    """The frame on screen as a packed concept image + a history entry; its name."""
    from ..core.history import Record
    from . import apply
    from .operators import engine_model
    st = _STATE
    if st is None or st.image_data is None:
        return None
    img, p = st.image_data, st.params
    rec = Record(prompt=p.get("prompt", ""), seed=int(p.get("seed", 0)),
                 steps=int(p.get("steps", 0)), width=int(img.width), height=int(img.height),
                 model=engine_model(runtime.get()), kind="concept")
    tx = apply.Transaction()
    with tx:
        image = apply.create_result_image(tx, img, rec)
        apply.add_history(context.scene, [rec])
    return image.name


def draw_panel(layout, context) -> None:
    """Live's part of the concept panel."""
    lv = context.scene.zimage_live
    box = layout.box()
    row = box.row(align=True)
    on = active()
    row.operator("zimage.live", text="Live" if not on else "Live (on)", depress=on,
                 icon="PLAY" if not on else "PAUSE")
    row.operator("zimage.live_keep", text="Keep", icon="IMPORT")
    col = box.column(align=True)
    col.prop(lv, "context")
    col.prop(lv, "size")
    col.prop(lv, "steps")
    if lv.context == "IMG2IMG":
        col.prop(lv, "strength")
    col.prop(lv, "seed")
    col.prop(lv, "debounce_ms")
    col = box.column(align=True)
    col.prop(lv, "overlay")
    sub = col.column(align=True)
    sub.enabled = lv.overlay
    sub.prop(lv, "overlay_corner")
    sub.prop(lv, "overlay_size")
    sub.prop(lv, "overlay_opacity")
    st = _STATE
    if st is not None:
        c = st.ctrl.counts
        box.label(text=f"Frames: {c['shown']} shown, {c['superseded']} skipped")
        if st.ctrl.error:
            box.label(text=st.ctrl.error[:120], icon="ERROR")


CLASSES = (ZIMAGE_PG_live, ZIMAGE_OT_live, ZIMAGE_OT_live_keep)


def register_props() -> None:
    bpy.types.Scene.zimage_live = PointerProperty(type=ZIMAGE_PG_live)


def unregister_props() -> None:
    stop("the add-on was disabled")
    del bpy.types.Scene.zimage_live
