"""Operators: generate / cancel, apply (undoable), engine connection and lifecycle, history."""

from __future__ import annotations

import logging

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from ..core import requests as rq
from ..core.errors import explain
from ..core.history import Record, parse_loras, recall_settings
from . import apply, capture, pump, runtime

log = logging.getLogger(__name__)

SLOTS = [("texture", "Texture", "The texture job"), ("concept", "Concept", "The concept job"),
         ("touchup", "Touch-up", "The touch-up job")]


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


def effective_size(scene, limits: rq.EngineLimits, match_camera: bool = False
                   ) -> tuple[int, int]:
    """The size to ask for; `match_camera`: the camera's aspect whatever the preset (concept
    images, by default)."""
    s = scene.zimage
    if s.size_preset == "CAMERA" or match_camera:
        r = scene.render
        aspect = (r.resolution_x * r.pixel_aspect_x) / max(1e-6, r.resolution_y * r.pixel_aspect_y)
        return rq.size_for_aspect(aspect, s.width * s.height, limits)
    return s.width, s.height


def read_settings(scene, limits: rq.EngineLimits, context: str = "none") -> rq.Settings:
    s = scene.zimage
    w, h = effective_size(scene, limits)
    return rq.Settings(prompt=s.prompt, width=w, height=h, steps=s.steps,
                       seed_random=s.seed_random, seed=s.seed, num_images=s.num_images,
                       context=context, strength=s.strength, control_scale=s.control_scale,
                       loras=active_loras(s))


def active_loras(s) -> tuple:
    """The LoRAs switched on in the panel that the engine offers: ((name, weight), ...)."""
    return tuple((item.name, round(item.weight, 4)) for item in s.loras
                 if item.use and item.offered)


_port_open = runtime.port_open


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


def refuse(op, code: str, detail: str | None = None) -> set:
    """Refuse before sending: the panel's error box, the status bar, nothing sent."""
    err = explain(code, detail)
    rt = runtime.get()
    if rt is not None:
        rt.board.last_error = err
    op.report({"ERROR"}, err.text)
    return {"CANCELLED"}


def submit(op, context, slot: str, job_context: dict, *, init_png=None, depth_png=None,
           mode: str = "none", size: tuple[int, int] | None = None,
           num_images: int | None = None, extra=None) -> set:
    """Check everything the engine would refuse (size, prompt length, capabilities), then
    send. `size`/`num_images` override the panel's; `extra(request, caps)` adds params."""
    rt = runtime.get()
    if rt is None:
        return {"CANCELLED"}
    if not rt.board.can_submit(slot):
        op.report({"WARNING"}, f"A {slot} job is already running")
        return {"CANCELLED"}
    scene = context.scene
    limits, caps, _known = engine_limits_caps(rt)
    settings = read_settings(scene, limits, mode)
    if size is not None:
        settings.width, settings.height = size
    if num_images is not None:
        settings.num_images = num_images
    problem = rq.prompt_problem(settings.prompt, limits)
    if problem:
        return refuse(op, "prompt_too_long", problem)
    try:
        request = rq.build_request(settings, limits, caps, init_png=init_png,
                                   depth_png=depth_png)
        if extra is not None:
            extra(request, caps)
    except rq.RequestError as exc:
        return refuse(op, exc.code, exc.detail)
    try:
        ensure_engine(rt)
    except runtime.KeyFileError as exc:
        rt.board.last_error = exc.error
        op.report({"ERROR"}, exc.error.text)
        return {"CANCELLED"}
    except Exception as exc:
        err = explain("engine_not_started", str(exc))
        err = type(err)(err.code, f"Could not start the engine: {exc}.", err.hint)
        rt.board.last_error = err
        op.report({"ERROR"}, err.text)
        return {"CANCELLED"}
    job_context = dict(job_context, scene=scene.name, model=engine_model(rt),
                       file=bpy.data.filepath)
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
    if job.context.get("file", bpy.data.filepath) != bpy.data.filepath:
        rt.board.fail(job, "apply_failed", "the job was started in another file")
        return False
    if job.slot == "touchup":
        return apply_touchup(context, job)
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
            where = apply.apply_texture(job.context, images[0], tx, images)
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
    job.message = with_seeds(where, records)
    return True


def with_seeds(where: str, records) -> str:
    """The apply message, naming each seed once: image names already end in "(seed)"."""
    missing = [str(r.seed) for r in records if f"({r.seed})" not in where]
    if not missing:
        return where
    return f"{where} (seed{'s' if len(missing) > 1 else ''} {', '.join(missing)})"


def apply_touchup(context, job) -> bool:
    """Blend the engine's repaint into the image by the mask (pixels outside it stay exactly
    as they were) and put the new image wherever the old one was used."""
    from ..core import touchup
    rt = runtime.get()
    old = bpy.data.images.get(job.context.get("image") or "")
    tx = apply.Transaction()
    try:
        if old is None:
            raise ValueError("the image to touch up is gone")
        original = job.context["original"]
        mask = job.context["mask"]
        w, h = job.context["size"]
        rgb, rw, rh = apply._rgb_and_size(job.images[0])
        if (rw, rh) != (w, h):
            raise ValueError(f"the engine answered {rw} x {rh}, not {w} x {h}")
        out = touchup.composite(original, bytes(rgb), mask)
        model = engine_model(rt) or job.context.get("model", "")
        rec = apply.make_records(job, model, "touchup")[0]
        png = apply.pixels.encode_png(out, w, h, 3,
                                      text={"parameters": rec.parameters_json()})
        image = apply.create_result_image(tx, job.images[0], rec, (png, w, h))
        name = old.name
        rec.image_name = name
        apply.add_history(context.scene, [rec])
        old_fake = old.use_fake_user
        tx.changed(lambda: setattr(old, "use_fake_user", old_fake))
        old.use_fake_user = True                # the version before stays in the file
        old.user_remap(image)
        tx.changed(lambda: image.user_remap(old))
        # the texture keeps its name; the version before is kept as "... before touch-up"
        old.name = name[:40] + " before touch-up"
        image.name = name
        history = context.scene.zimage.history
        for item in list(history)[:-1]:         # earlier entries follow the old image
            if item.image_name == name:
                item.image_name = old.name
    except Exception as exc:
        log.exception("Z-Image: applying the touch-up failed")
        tx.rollback()
        rt.board.fail(job, "apply_failed", str(exc))
        return False
    for key in ("original", "mask", "encoded"):
        job.context.pop(key, None)
    job.context["result_images"] = [image.name]
    rt.board.complete(job)
    job.message = with_seeds(f"Touched up {image.name}", [rec])
    return True


def texture_targets(context, s) -> tuple[list, str | None]:
    """The objects a texture goes on, or why it cannot be sent."""
    obj = context.active_object
    if s.texture_objects == "ACTIVE":
        objs = [obj] if obj is not None else []
    else:
        objs = [o for o in context.selected_objects if o.type == "MESH"]
        if obj is not None and obj.type == "MESH" and obj not in objs and obj.select_get():
            objs.insert(0, obj)
        if not objs:
            return [], "select one or more mesh objects"
    for o in objs:
        problem = apply.can_hold_texture(o)
        if problem:
            return [], problem
    return objs, None


# ---- generate / cancel / apply -----------------------------------------------------------

class ZIMAGE_OT_generate_texture(bpy.types.Operator):
    """Generate a texture from the prompt and put it on the active (or every selected) object"""
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
        num_images = None
        if s.texture_target == "IMAGE_NODE":
            mat = obj.active_material if obj else None
            node = apply.find_image_node(mat)
            if node is None:
                self.report({"ERROR"}, "Select an Image Texture node in the active object's "
                            "material, or apply to a new material.")
                return {"CANCELLED"}
            info.update(material=mat.name, node=node.name)
        else:
            objs, problem = texture_targets(context, s)
            if problem:
                return refuse(self, "cannot_hold_material", problem)
            info.update(objects=[o.name for o in objs], objects_mode=s.texture_objects)
            if s.texture_objects == "SELECTED_EACH":
                num_images = len(objs)
                most = engine_limits_caps(runtime.get())[0].max_images
                if num_images > most:
                    return refuse(self, "invalid_params", f"{num_images} objects selected; one "
                                  f"image each works for up to {most} (or share one material)")
        return submit(self, context, "texture", info, num_images=num_images,
                      extra=lambda req, caps: rq.add_tile(req, s.seamless, caps))


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
        if scene.camera is None and (s.concept_placement == "CAMERA_BG" or (
                mode != "none" and s.concept_source in ("CAMERA", "RENDER"))):
            return refuse(self, "no_camera")
        if known and ((mode == "img2img" and not rq.can_img2img(caps))
                      or (mode == "depth" and not rq.can_depth(caps))):
            err = explain("capability_unavailable",
                          "image to image" if mode == "img2img" else "depth control")
            self.report({"ERROR"}, err.text)
            return {"CANCELLED"}
        w, h = effective_size(scene, limits, s.concept_match_camera)
        init_png = depth_png = None
        try:
            if mode == "img2img":
                init_png = capture.capture_color(context, scene, s.concept_source, w, h)
            elif mode == "depth" and s.concept_source == "RENDER":
                depth_png = capture.capture_render_depth(context, scene, w, h)
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
                      mode=mode, size=(w, h))


class ZIMAGE_OT_touch_up(bpy.types.Operator):
    """Repaint the masked part of the image in the Image Editor"""
    bl_description = ("Repaint the masked part of the image in the Image Editor (erased alpha "
                      "or a mask image); the rest stays as it is")
    bl_idname = "zimage.touch_up"
    bl_label = "Touch Up Region"
    bl_options = {"REGISTER"}

    image: StringProperty(name="Image", description="The image to touch up (default: the "
                          "Image Editor's)", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        rt = runtime.get()
        return rt is not None and rt.board.can_submit("touchup")

    def execute(self, context):
        from ..core import touchup
        rt = runtime.get()
        s = context.scene.zimage
        image = bpy.data.images.get(self.image) if self.image else touchup_image(context)
        if image is None or image.size[0] == 0:
            return refuse(self, "nothing_to_touch_up", "no image is open")
        limits, caps, known = engine_limits_caps(rt)
        if known and not rq.can_inpaint(caps):
            return refuse(self, "capability_unavailable", "inpainting")
        w, h = image.size
        rgba = touchup.rgba_rows(float_pixels(image), w, h)
        if s.touchup_mask == "IMAGE":
            m = s.touchup_mask_image
            if m is None or m.size[0] == 0:
                return refuse(self, "nothing_to_touch_up", "pick a mask image")
            mw, mh = m.size
            mask = touchup.mask_from_grey(touchup.rgba_rows(float_pixels(m), mw, mh), mw, mh, w, h)
        else:
            mask = touchup.mask_from_alpha(rgba)
        if touchup.is_empty(mask):
            return refuse(self, "nothing_to_touch_up", "the mask is empty")
        original = touchup.rgb_of(rgba)
        image_png = apply.pixels.encode_png(original, w, h, 3)
        mask_png = apply.pixels.encode_png(mask, w, h, 1)
        info = {"image": image.name, "original": original, "mask": mask, "size": (w, h)}
        return submit(self, context, "touchup", info, size=(w, h), num_images=1,
                      extra=lambda req, caps: rq.add_inpaint(req, image_png, mask_png, caps))


def float_pixels(image):
    """An image's RGBA floats in one copy (pixels[:] builds a Python float per channel)."""
    import numpy as np
    c = image.channels
    buf = np.empty(image.size[0] * image.size[1] * c, np.float32)
    image.pixels.foreach_get(buf)
    if c == 4:
        return buf
    px = buf.reshape(-1, c)  # grey or RGB images: as RGBA, opaque
    rgb = np.repeat(px[:, :1], 3, axis=1) if c < 3 else px[:, :3]
    return np.concatenate([rgb, np.ones((len(px), 1), np.float32)], axis=1).ravel()


def touchup_image(context):
    """The image to touch up: the Image Editor's, else the active object's texture."""
    space = context.space_data
    if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
        return space.image
    obj = context.active_object
    node = apply.find_image_node(obj.active_material if obj else None)
    return node.image if node is not None else None


class ZIMAGE_OT_cancel(bpy.types.Operator):
    """Cancel the running job (the panel resets at once)"""
    bl_idname = "zimage.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    slot: EnumProperty(items=SLOTS, name="Job", description="Which job")

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

    slot: EnumProperty(items=SLOTS, name="Job", description="Which job")

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

    message: StringProperty(name="Message", description="The text to show")
    level: StringProperty(default="ERROR", name="Level",
                          description="INFO, WARNING or ERROR")

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
        try:
            rt.connect()
        except runtime.KeyFileError as exc:
            rt.board.last_error = exc.error
            self.report({"ERROR"}, exc.error.text)
            return {"CANCELLED"}
        pump.start()
        return {"FINISHED"}


class ZIMAGE_OT_start_engine(bpy.types.Operator):
    """Start a local engine with the Python and model set in the preferences"""
    bl_description = ("Start a local engine with the Python and model set in the preferences "
                      "(it stops with Blender)")
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
        rt.notice = ""              # the connection row says "Engine starting..."
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
    """Unload the engine's models to give GPU memory back, without stopping the engine"""
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


def recall_loras(s, loras) -> None:
    """Exactly these LoRAs on, with their weights; every other one off."""
    wanted = dict(loras)
    have = {item.name: item for item in s.loras}
    for name in wanted:
        if name not in have:              # not offered by this engine (yet): keep the choice
            item = s.loras.add()
            item.name, item.offered = name, False
            have[name] = item
    for name, item in have.items():
        item.use = name in wanted
        if name in wanted:
            item.weight = wanted[name]


class ZIMAGE_OT_history_recall(bpy.types.Operator):
    """Put this result's prompt, size, steps and seed back into the panel"""
    bl_idname = "zimage.history_recall"
    bl_label = "Recall Parameters"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(default=-1, name="Index",
                       description="History entry (-1: the selected one)")

    def execute(self, context):
        item = _history_item(context, self.index)
        if item is None:
            return {"CANCELLED"}
        s = context.scene.zimage
        rec = Record(item.prompt, item.seed, item.steps, item.width, item.height, item.model,
                     loras=parse_loras(item.loras))
        values = recall_settings(rec)
        recall_loras(s, values.pop("loras", ()))
        preset = next((k for k, (w, h) in rq.PRESET_SIZES.items()
                       if (w, h) == (rec.width, rec.height)), "CUSTOM")
        s.size_preset = preset
        for key, value in values.items():
            setattr(s, key, value)
        self.report({"INFO"}, f"Recalled seed {item.seed}")
        return {"FINISHED"}


class ZIMAGE_OT_history_apply(bpy.types.Operator):
    """Apply this result again"""
    bl_description = ("Apply this result again: a texture to the active object (new "
                      "material), a concept image to the Image Editor")
    bl_idname = "zimage.history_apply"
    bl_label = "Re-apply"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(default=-1, name="Index",
                       description="History entry (-1: the selected one)")

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

    name: StringProperty(name="Image", description="The image to show")

    def execute(self, context):
        image = bpy.data.images.get(self.name)
        if image is None:
            return {"CANCELLED"}
        apply.show_in_image_editors(image)
        return {"FINISHED"}


CLASSES = (ZIMAGE_OT_generate_texture, ZIMAGE_OT_generate_concept, ZIMAGE_OT_cancel,
           ZIMAGE_OT_apply_result, ZIMAGE_OT_report, ZIMAGE_OT_dismiss_error, ZIMAGE_OT_connect,
           ZIMAGE_OT_start_engine, ZIMAGE_OT_stop_engine, ZIMAGE_OT_free_vram,
           ZIMAGE_OT_history_recall, ZIMAGE_OT_history_apply, ZIMAGE_OT_show_image,
           ZIMAGE_OT_touch_up)


# ---- menus -------------------------------------------------------------------------------

def menu_image(self, context):
    layout = self.layout
    layout.separator()
    layout.operator("zimage.touch_up", icon="BRUSH_DATA")
    layout.operator("zimage.generate_concept", icon="SHADERFX")


def menu_object(self, context):
    layout = self.layout
    layout.separator()
    layout.operator("zimage.generate_texture", icon="SHADERFX")


MENUS = (("IMAGE_MT_image", menu_image), ("VIEW3D_MT_object", menu_object))
