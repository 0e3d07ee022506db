"""Operators: generate / cancel, apply (undoable), engine connection and lifecycle, history."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from ..core import requests as rq
from ..core.errors import explain
from ..core.history import Record, recall_settings
from . import apply, capture, pump, runtime

log = logging.getLogger(__name__)

SLOTS = [("texture", "Texture", ""), ("concept", "Concept", "")]


# ---- helpers -----------------------------------------------------------------------------

def engine_limits_caps(rt) -> tuple[rq.EngineLimits, set[str], bool]:
    welcome = rt.board.welcome
    if welcome:
        return rq.EngineLimits.from_welcome(welcome), rq.capabilities(welcome), True
    # not connected yet: the engine checks for itself and answers with a clear error
    return rq.EngineLimits(), {"txt2img", "img2img", "control.depth"}, False


def engine_model(rt) -> str:
    engine = (rt.board.welcome or {}).get("engine") or {}
    return str(engine.get("model") or "")


def effective_size(scene, limits: rq.EngineLimits) -> tuple[int, int]:
    s = scene.zimage
    if s.size_preset == "CAMERA":
        r = scene.render
        aspect = (r.resolution_x * r.pixel_aspect_x) / max(1e-6, r.resolution_y * r.pixel_aspect_y)
        return rq.size_for_aspect(aspect, s.width * s.height, limits)
    return s.width, s.height


def read_settings(scene, limits: rq.EngineLimits, context: str = "none") -> rq.Settings:
    s = scene.zimage
    w, h = effective_size(scene, limits)
    return rq.Settings(prompt=s.prompt, width=w, height=h, steps=s.steps,
                       seed_random=s.seed_random, seed=s.seed, num_images=s.num_images,
                       context=context, strength=s.strength, control_scale=s.control_scale)


def _port_open(address: str) -> bool | None:
    """True/False for a loopback tcp address (a refused connect is instant); None if unknown."""
    try:
        parts = urlsplit(address)
        if parts.scheme != "tcp" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            return None
        with socket.create_connection((parts.hostname, parts.port), timeout=0.3):
            return True
    except OSError:
        return False
    except ValueError:
        return None


def ensure_engine(rt) -> None:
    """Connect; start the local engine first when nothing listens and one is configured."""
    p = runtime.prefs()
    if rt.connection == "connected":
        return
    if (p is not None and p.auto_start and p.engine_python.strip()
            and (rt.engine is None or not rt.engine.alive)
            and _port_open(p.address) is False):
        rt.start_engine()
    elif rt.client is None:
        rt.connect()


def submit(op, context, slot: str, job_context: dict, *, init_png=None, depth_png=None,
           mode: str = "none") -> set:
    rt = runtime.get()
    if rt is None:
        return {"CANCELLED"}
    if not rt.board.can_submit(slot):
        op.report({"WARNING"}, f"A {slot} job is already running")
        return {"CANCELLED"}
    scene = context.scene
    limits, caps, _known = engine_limits_caps(rt)
    try:
        request = rq.build_request(read_settings(scene, limits, mode), limits, caps,
                                   init_png=init_png, depth_png=depth_png)
    except rq.RequestError as exc:
        err = explain(exc.code, exc.detail)
        rt.board.last_error = err
        op.report({"ERROR"}, err.text)
        return {"CANCELLED"}
    try:
        ensure_engine(rt)
    except Exception as exc:
        err = explain("engine_not_started", str(exc))
        err = type(err)(err.code, f"Could not start the engine: {exc}.", err.hint)
        rt.board.last_error = err
        op.report({"ERROR"}, err.text)
        return {"CANCELLED"}
    job_context = dict(job_context, scene=scene.name, model=engine_model(rt))
    job_id = rt.client.submit(request.params, request.blobs or None, result_format="raw",
                              preview_every=1, preview_max_side=256)
    rt.board.submit(slot, job_id, request.params, job_context)
    if scene.zimage.seed_random:
        scene.zimage.seed = request.seed      # shown in the panel; untick Random to reuse it
    pump.start()
    pump.redraw()
    return {"FINISHED"}


def apply_job(context, job) -> bool:
    """Turn a finished job into images + material/placement + history, all or nothing."""
    rt = runtime.get()
    scene = bpy.data.scenes.get(job.context.get("scene") or "") or context.scene
    encoded = job.context.pop("encoded", None)      # PNGs the runtime made off-thread
    if encoded is None or len(encoded) != len(job.images):
        model = engine_model(rt) or job.context.get("model", "")
        encoded = [(rec, None) for rec in apply.make_records(job, model, job.slot)]
    else:
        encoded = [(rec, (png, w, h)) for rec, png, w, h in encoded]
    records = [rec for rec, _ in encoded]
    tx = apply.Transaction()
    try:
        images = [apply.create_result_image(tx, data, rec, enc)
                  for data, (rec, enc) in zip(job.images, encoded)]
        if job.slot == "texture":
            where = apply.apply_texture(job.context, images[0], tx)
        else:
            where = apply.place_concept(job.context, images[0], tx, scene)
        apply.add_history(scene, records)
    except Exception as exc:
        log.exception("Z-Image: applying the result failed")
        tx.rollback()
        rt.board.fail(job, "apply_failed", str(exc))
        return False
    job.context["result_images"] = [im.name for im in images]
    rt.board.complete(job)
    seeds = ", ".join(str(r.seed) for r in records)
    job.message = f"{where} (seed {seeds})"
    return True


# ---- generate / cancel / apply -----------------------------------------------------------

class ZIMAGE_OT_generate_texture(bpy.types.Operator):
    """Generate a texture from the prompt and put it on the active object"""
    bl_idname = "zimage.generate_texture"
    bl_label = "Generate Texture"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        rt = runtime.get()
        return rt is not None and rt.board.can_submit("texture")

    def execute(self, context):
        s = context.scene.zimage
        obj = context.active_object
        info = {"target": s.texture_target, "object": obj.name if obj else ""}
        if s.texture_target == "IMAGE_NODE":
            mat = obj.active_material if obj else None
            node = apply.find_image_node(mat)
            if node is None:
                self.report({"ERROR"}, "Select an Image Texture node in the active object's "
                            "material, or apply to a new material.")
                return {"CANCELLED"}
            info.update(material=mat.name, node=node.name)
        return submit(self, context, "texture", info)


class ZIMAGE_OT_generate_concept(bpy.types.Operator):
    """Capture the camera or the current view and generate a concept image from it"""
    bl_idname = "zimage.generate_concept"
    bl_label = "Generate Concept"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        rt = runtime.get()
        return rt is not None and rt.board.can_submit("concept")

    def execute(self, context):
        rt = runtime.get()
        scene = context.scene
        s = scene.zimage
        limits, caps, known = engine_limits_caps(rt)
        mode = {"NONE": "none", "IMG2IMG": "img2img", "DEPTH": "depth"}[s.concept_context]
        if known and ((mode == "img2img" and not rq.can_img2img(caps))
                      or (mode == "depth" and not rq.can_depth(caps))):
            err = explain("capability_unavailable",
                          "image to image" if mode == "img2img" else "depth control")
            self.report({"ERROR"}, err.text)
            return {"CANCELLED"}
        w, h = effective_size(scene, limits)
        init_png = depth_png = None
        try:
            if mode == "img2img":
                init_png = capture.capture_color(context, scene, s.concept_source, w, h)
            elif mode == "depth":
                depth_png = capture.capture_depth(context, scene, s.concept_source, w, h)
        except Exception as exc:
            log.exception("Z-Image capture")
            err = explain("capture_failed")
            rt.board.last_error = err
            self.report({"ERROR"}, f"{err.message} ({exc}) {err.hint}")
            return {"CANCELLED"}
        info = {"placement": s.concept_placement, "capture": mode,
                "camera": scene.camera.name if scene.camera else "",
                "view_matrix": capture.capture_matrix(context, scene, s.concept_source)
                if s.concept_source == "VIEW" else None}
        rt.last_capture = init_png or depth_png
        return submit(self, context, "concept", info, init_png=init_png, depth_png=depth_png,
                      mode=mode)


class ZIMAGE_OT_cancel(bpy.types.Operator):
    """Cancel the running job (the panel resets at once)"""
    bl_idname = "zimage.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    slot: EnumProperty(items=SLOTS)

    @classmethod
    def poll(cls, context):
        return runtime.get() is not None

    def execute(self, context):
        rt = runtime.get()
        job_id = rt.board.cancel(self.slot)
        if job_id and rt.client is not None:
            rt.client.cancel(job_id)
        pump.redraw()
        return {"FINISHED"}


class ZIMAGE_OT_apply_result(bpy.types.Operator):
    """Apply a finished job's images to the scene (one undo step)"""
    bl_idname = "zimage.apply_result"
    bl_label = "Apply Z-Image Result"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    slot: EnumProperty(items=SLOTS)

    def execute(self, context):
        rt = runtime.get()
        job = rt.board.jobs.get(self.slot) if rt else None
        if job is None or not job.images:
            return {"CANCELLED"}
        if not apply_job(context, job):
            self.report({"ERROR"}, job.error.text if job.error else "Applying failed")
            return {"CANCELLED"}
        self.report({"INFO"}, job.message)
        return {"FINISHED"}


class ZIMAGE_OT_report(bpy.types.Operator):
    """Show a message in the status bar"""
    bl_idname = "zimage.report"
    bl_label = "Z-Image Message"
    bl_options = {"INTERNAL"}

    message: StringProperty()
    level: StringProperty(default="ERROR")

    def execute(self, context):
        self.report({self.level if self.level in ("INFO", "WARNING", "ERROR") else "INFO"},
                    self.message)
        return {"FINISHED"}


class ZIMAGE_OT_dismiss_error(bpy.types.Operator):
    """Hide the error message"""
    bl_idname = "zimage.dismiss_error"
    bl_label = "Dismiss"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        rt = runtime.get()
        if rt is not None:
            rt.board.last_error = None
            for job in rt.board.jobs.values():
                job.error = None
        pump.redraw()
        return {"FINISHED"}


# ---- engine ------------------------------------------------------------------------------

class ZIMAGE_OT_connect(bpy.types.Operator):
    """Connect to the engine at the address in the preferences"""
    bl_idname = "zimage.connect"
    bl_label = "Connect"

    def execute(self, context):
        rt = runtime.get()
        rt.disconnect()
        rt.connect()
        pump.start()
        return {"FINISHED"}


class ZIMAGE_OT_start_engine(bpy.types.Operator):
    """Start a local engine with the Python and model set in the preferences. Blender owns
    it: it stops with Blender"""
    bl_idname = "zimage.start_engine"
    bl_label = "Start Local Engine"

    @classmethod
    def poll(cls, context):
        rt, p = runtime.get(), runtime.prefs()
        return (rt is not None and p is not None and bool(p.engine_python.strip())
                and (rt.engine is None or not rt.engine.alive))

    def execute(self, context):
        rt = runtime.get()
        try:
            rt.start_engine()
        except Exception as exc:
            self.report({"ERROR"}, f"Could not start the engine: {exc}")
            return {"CANCELLED"}
        rt.notice = "Engine starting..."
        pump.start()
        return {"FINISHED"}


class ZIMAGE_OT_stop_engine(bpy.types.Operator):
    """Stop the local engine this Blender started"""
    bl_idname = "zimage.stop_engine"
    bl_label = "Stop Local Engine"

    @classmethod
    def poll(cls, context):
        rt = runtime.get()
        return rt is not None and rt.engine is not None

    def execute(self, context):
        rt = runtime.get()
        rt.stop_engine()
        rt.notice = "Engine stopped"
        pump.redraw()
        return {"FINISHED"}


class ZIMAGE_OT_free_vram(bpy.types.Operator):
    """Unload the engine's models to give GPU memory back, without stopping the engine
    (only when the engine offers it)"""
    bl_idname = "zimage.free_vram"
    bl_label = "Free VRAM"

    @classmethod
    def poll(cls, context):
        rt = runtime.get()
        return (rt is not None and rt.client is not None
                and rq.can_free_vram(rq.capabilities(rt.board.welcome)))

    def execute(self, context):
        runtime.get().client.unload()
        return {"FINISHED"}


# ---- history -----------------------------------------------------------------------------

def _history_item(context, index: int):
    hist = context.scene.zimage.history
    if index < 0:
        index = context.scene.zimage.history_index
    return hist[index] if 0 <= index < len(hist) else None


class ZIMAGE_OT_history_recall(bpy.types.Operator):
    """Put this result's prompt, size, steps and seed back into the panel"""
    bl_idname = "zimage.history_recall"
    bl_label = "Recall Parameters"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(default=-1)

    def execute(self, context):
        item = _history_item(context, self.index)
        if item is None:
            return {"CANCELLED"}
        s = context.scene.zimage
        rec = Record(item.prompt, item.seed, item.steps, item.width, item.height, item.model)
        values = recall_settings(rec)
        preset = next((k for k, (w, h) in rq.PRESET_SIZES.items()
                       if (w, h) == (rec.width, rec.height)), "CUSTOM")
        s.size_preset = preset
        for key, value in values.items():
            setattr(s, key, value)
        self.report({"INFO"}, f"Recalled seed {item.seed}")
        return {"FINISHED"}


class ZIMAGE_OT_history_apply(bpy.types.Operator):
    """Apply this result again: a texture to the active object (new material), a concept
    image to the Image Editor"""
    bl_idname = "zimage.history_apply"
    bl_label = "Re-apply"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(default=-1)

    def execute(self, context):
        item = _history_item(context, self.index)
        image = bpy.data.images.get(item.image_name) if item else None
        if image is None:
            self.report({"ERROR"}, "That image is no longer in this file")
            return {"CANCELLED"}
        tx = apply.Transaction()
        try:
            if item.kind == "texture":
                obj = context.active_object
                where = apply.apply_texture({"target": "NEW_MATERIAL",
                                             "object": obj.name if obj else ""}, image, tx)
            else:
                where = apply.place_concept({"placement": "IMAGE_EDITOR"}, image, tx,
                                            context.scene)
        except Exception as exc:
            tx.rollback()
            self.report({"ERROR"}, f"Could not apply: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, where)
        return {"FINISHED"}


class ZIMAGE_OT_show_image(bpy.types.Operator):
    """Show the image in the Image Editor"""
    bl_idname = "zimage.show_image"
    bl_label = "Show"

    name: StringProperty()

    def execute(self, context):
        image = bpy.data.images.get(self.name)
        if image is None:
            return {"CANCELLED"}
        apply.show_in_image_editors(image)
        return {"FINISHED"}


CLASSES = (ZIMAGE_OT_generate_texture, ZIMAGE_OT_generate_concept, ZIMAGE_OT_cancel,
           ZIMAGE_OT_apply_result, ZIMAGE_OT_report, ZIMAGE_OT_dismiss_error, ZIMAGE_OT_connect,
           ZIMAGE_OT_start_engine, ZIMAGE_OT_stop_engine, ZIMAGE_OT_free_vram,
           ZIMAGE_OT_history_recall, ZIMAGE_OT_history_apply, ZIMAGE_OT_show_image)
