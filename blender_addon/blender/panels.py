"""Sidebar panels (tab "Z-Image") in the 3D viewport, the Image Editor (plus Touch Up) and
the Shader Editor (main and Texture, where artists pick the target Image Texture node)."""

from __future__ import annotations

import bpy

from ..core import requests as rq
from ..core.download import download_report
from ..core.jobs import JobState
from . import runtime
from .apply import PREVIEW_NAME

CATEGORY = "Z-Image"


MODEL_HINT = "Or set Model below to a model folder or a ComfyUI .safetensors file."


def draw_connection(layout, context, prefs_view: bool = False) -> None:
    rt = runtime.get()
    if rt is None:
        return
    box = layout.box()
    state = rt.connection
    engine = rt.engine_state
    welcome = rt.board.welcome or {}
    info = welcome.get("engine") or {}
    row = box.row(align=True)
    if state == "connected" and info.get("state") == "loading":
        row.label(text="Engine loading the model...", icon="SORTTIME")
        download = download_report(info)
        if download is not None:      # the first start fetches the weights: show it
            box.progress(factor=download["fraction"], type="BAR", text=download["text"])
    elif state == "connected" and info.get("state") == "failed":
        row.label(text=f"Model failed: {info.get('error') or 'see the engine log'}"[:90],
                  icon="ERROR")
        if prefs_view:      # the whole sentence, and where the alternative is set
            import textwrap
            col = box.column(align=True)
            for line in textwrap.wrap(str(info.get("error") or ""), 100)[:8]:
                col.label(text=line)
            col.label(text=MODEL_HINT, icon="INFO")
    elif state == "connected":
        text = f"Engine: {info.get('model') or 'ready'}"
        if info.get("device"):
            text += f" on {info['device']}"
        row.label(text=text, icon="CHECKMARK")
    elif rt.auth_problem is not None:
        row.label(text="The engine refused this client's key" if rt.auth_problem ==
                  "unauthorized" else "Key handshake with the engine failed", icon="LOCKED")
    elif engine == "starting":
        row.label(text="Engine starting...", icon="SORTTIME")
    elif state == "connecting":
        row.label(text="Connecting...", icon="SORTTIME")
    else:
        row.label(text="Engine not connected", icon="ERROR" if rt.client else "UNLINKED")
    sub = box.row(align=True)
    if rt.client is None or state != "connected":
        sub.operator("zimage.connect", icon="LINKED")
    if rt.engine is not None and rt.engine.alive:
        sub.operator("zimage.stop_engine", icon="PAUSE")
    else:
        sub.operator("zimage.start_engine", icon="PLAY")
    row = sub.row(align=True)
    row.enabled = rq.can_free_vram(rq.capabilities(rt.board.welcome))
    row.operator("zimage.free_vram", icon="TRASH")
    if rt.notice:
        box.label(text=rt.notice, icon="INFO")
    if prefs_view and rt.engine is not None and rt.engine.model_failed:
        box.label(text=MODEL_HINT, icon="INFO")
    if prefs_view and rt.engine is not None:
        for line in rt.engine.log_tail(6):
            box.label(text=line[:120])


def draw_job(layout, slot: str, label: str, operator: str) -> None:
    rt = runtime.get()
    job = rt.board.jobs.get(slot) if rt else None
    row = layout.row(align=True)
    row.scale_y = 1.4
    if job is not None and job.active:
        row.operator("zimage.cancel", text="Cancel", icon="CANCEL").slot = slot
        layout.progress(factor=job.progress, type="BAR", text=job.status_text())
        if job.seed is not None:
            layout.label(text=f"Seed {job.seed}")
        return
    row.operator(operator, text=label, icon="SHADERFX")
    if job is None:
        return
    if job.phase == JobState.FAILED and job.error is not None:
        box = layout.box()
        col = box.column(align=True)
        col.alert = True
        _wrapped(col, job.error.message, icon="ERROR")
        _wrapped(box.column(align=True), job.error.hint, icon="INFO")
        box.operator("zimage.dismiss_error", icon="X")
    elif job.phase in (JobState.SUCCEEDED, JobState.CANCELLED):
        _wrapped(layout.column(align=True), job.message,
                 icon="CHECKMARK" if job.phase == JobState.SUCCEEDED else "CANCEL")
    names = job.context.get("result_images") or []
    if names:
        col = layout.column(align=True)
        for name in names:
            image = bpy.data.images.get(name)
            if image is None:
                continue
            r = col.row(align=True)
            r.label(text=name, icon="IMAGE_DATA")    # the name ends with the seed
            r.operator("zimage.show_image", text="", icon="HIDE_OFF").name = name


def _wrapped(col, text: str, icon: str = "NONE", width: int = 42) -> None:
    words, line, first = text.split(), "", True
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            col.label(text=line, icon=icon if first else "BLANK1")
            line, first = w, False
        else:
            line = f"{line} {w}".strip()
    if line:
        col.label(text=line, icon=icon if first else "BLANK1")


class _Base:
    bl_region_type = "UI"
    bl_category = CATEGORY

    @classmethod
    def poll(cls, context):
        return runtime.get() is not None and hasattr(context.scene, "zimage")


class MainPanel(_Base):
    bl_label = "Z-Image"

    def draw(self, context):
        layout = self.layout
        rt = runtime.get()
        s = context.scene.zimage
        draw_connection(layout, context)
        layout.prop(s, "prompt", text="")
        col = layout.column(align=True)
        col.prop(s, "size_preset")
        limits = rq.EngineLimits.from_welcome(rt.board.welcome)
        if s.size_preset in ("CUSTOM", "CAMERA"):
            row = col.row(align=True)
            row.prop(s, "width")
            row.prop(s, "height")
        from .operators import effective_size
        w, h = effective_size(context.scene, limits)
        problem = rq.size_problem(w, h, limits)
        err = rt.board.last_error       # an error box goes once its cause is fixed
        if err is not None and (
                (err.code == "unsupported_size" and problem is None)
                or (err.code == "prompt_too_long" and rq.prompt_problem(s.prompt, limits) is None)):
            rt.board.last_error = None
        r = col.row()
        r.alert = problem is not None
        r.label(text=problem or f"{w} x {h}", icon="ERROR" if problem else "IMAGE_PLANE")
        col = layout.column(align=True)
        col.prop(s, "steps")
        row = col.row(align=True)
        row.prop(s, "seed_random", text="", icon="FILE_REFRESH", toggle=True)
        sub = row.row(align=True)
        sub.enabled = not s.seed_random
        sub.prop(s, "seed")
        col.prop(s, "num_images")
        if rt.board.last_error is not None and not any(
                j.error is rt.board.last_error for j in rt.board.jobs.values()):
            box = layout.box()
            c = box.column(align=True)
            c.alert = True
            _wrapped(c, rt.board.last_error.message, icon="ERROR")
            _wrapped(box.column(align=True), rt.board.last_error.hint, icon="INFO")
            box.operator("zimage.dismiss_error", icon="X")


class TexturePanel(_Base):
    bl_label = "Texture"

    def draw(self, context):
        s = context.scene.zimage
        layout = self.layout
        layout.prop(s, "texture_target")
        if s.texture_target == "NEW_MATERIAL":
            layout.prop(s, "texture_objects")
        rt = runtime.get()
        known = rt.board.welcome is not None
        row = layout.row()
        row.enabled = not known or rq.can_tile(rq.capabilities(rt.board.welcome))
        row.prop(s, "seamless")
        obj = context.active_object
        if s.texture_target == "NEW_MATERIAL" and s.texture_objects != "ACTIVE":
            n = sum(1 for o in context.selected_objects if o.type == "MESH")
            layout.label(text=f"{n} selected mesh object(s)", icon="OBJECT_DATA")
        else:
            layout.label(text=f"Object: {obj.name}" if obj else "No active object",
                         icon="OBJECT_DATA" if obj else "INFO")
        from .apply import can_hold_texture
        err = rt.board.last_error
        if err is not None and err.code == "cannot_hold_material" and (
                obj is not None and can_hold_texture(obj) is None):
            rt.board.last_error = None
        draw_job(layout, "texture", "Generate Texture", "zimage.generate_texture")


class ConceptPanel(_Base):
    bl_label = "Concept Image"

    def draw(self, context):
        rt = runtime.get()
        s = context.scene.zimage
        layout = self.layout
        caps = rq.capabilities(rt.board.welcome)
        known = rt.board.welcome is not None
        layout.prop(s, "concept_source")
        layout.prop(s, "concept_match_camera")
        layout.prop(s, "concept_context")
        if s.concept_context == "IMG2IMG":
            row = layout.row()
            row.enabled = not known or rq.can_img2img(caps)
            row.prop(s, "strength")
            if known and not rq.can_img2img(caps):
                layout.label(text="This engine has no image-to-image", icon="INFO")
        elif s.concept_context == "DEPTH":
            row = layout.row()
            row.enabled = not known or rq.can_depth(caps)
            row.prop(s, "control_scale")
            if known and not rq.can_depth(caps):
                layout.label(text="This engine has no depth control", icon="INFO")
        layout.prop(s, "concept_placement")
        ok = (s.concept_context == "NONE" or not known
              or (s.concept_context == "IMG2IMG" and rq.can_img2img(caps))
              or (s.concept_context == "DEPTH" and rq.can_depth(caps)))
        col = layout.column()
        col.enabled = ok
        draw_job(col, "concept", "Generate Concept", "zimage.generate_concept")
        from . import live
        live.draw_panel(layout, context)


class PreviewPanel(_Base):
    bl_label = "Preview"

    def draw(self, context):
        image = bpy.data.images.get(PREVIEW_NAME)
        if image is None:
            self.layout.label(text="The live preview appears here while generating")
            return
        try:
            preview = image.preview_ensure() or image.preview
            self.layout.template_icon(icon_value=preview.icon_id, scale=8.0)
        except Exception:
            self.layout.label(text=image.name, icon="IMAGE_DATA")
        self.layout.operator("zimage.show_image", text="Open in Image Editor",
                             icon="IMAGE").name = image.name


class ZIMAGE_UL_history(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_prop, index=0,
                  flt_flag=0):
        row = layout.row(align=True)
        icon = "MATERIAL" if item.kind == "texture" else "IMAGE_DATA"
        row.label(text=item.prompt or "(no prompt)", icon=icon)
        row.label(text=f"{item.seed}  {item.width}x{item.height}")


class ZIMAGE_UL_loras(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_prop, index=0,
                  flt_flag=0):
        row = layout.row(align=True)
        row.active = item.offered
        row.prop(item, "use", text="")
        row.label(text=item.name if item.offered else f"{item.name} (not offered)")
        sub = row.row(align=True)
        sub.enabled = item.use
        sub.prop(item, "weight", text="")


class LorasPanel(_Base):
    bl_label = "LoRAs"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.zimage
        layout = self.layout
        rt = runtime.get()
        caps = rq.capabilities(rt.board.welcome)
        if rt.board.welcome is not None and not rq.can_lora(caps):
            layout.label(text="This engine applies no LoRAs", icon="INFO")
            return
        if not len(s.loras):
            _wrapped(layout.column(align=True), "No LoRAs: start the engine with --lora-dir "
                     "(or Extra Arguments in the preferences) and put .safetensors files there",
                     icon="INFO")
            return
        layout.template_list("ZIMAGE_UL_loras", "", s, "loras", s, "lora_index", rows=3)
        if 0 <= s.lora_index < len(s.loras) and s.loras[s.lora_index].trigger_words:
            _wrapped(layout.column(align=True),
                     f"Trigger words: {s.loras[s.lora_index].trigger_words}", icon="TEXT")


class HistoryPanel(_Base):
    bl_label = "History"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.zimage
        layout = self.layout
        layout.template_list("ZIMAGE_UL_history", "", s, "history", s, "history_index",
                             rows=4)
        if 0 <= s.history_index < len(s.history):
            item = s.history[s.history_index]
            col = layout.column(align=True)
            col.label(text=f"Seed {item.seed}, {item.steps} steps, {item.width} x "
                      f"{item.height}")
            if item.model:
                col.label(text=f"Model {item.model}")
            row = layout.row(align=True)
            row.operator("zimage.history_recall", icon="RECOVER_LAST").index = s.history_index
            row.operator("zimage.history_apply", icon="CHECKMARK").index = s.history_index
            row.operator("zimage.show_image", text="", icon="HIDE_OFF").name = item.image_name


class TouchUpPanel(_Base):
    bl_label = "Touch Up"

    def draw(self, context):
        s = context.scene.zimage
        layout = self.layout
        from .operators import touchup_image
        image = touchup_image(context)
        layout.label(text=f"Image: {image.name}" if image else "Open a texture in this editor",
                     icon="IMAGE_DATA" if image else "INFO")
        layout.prop(s, "touchup_mask")
        if s.touchup_mask == "IMAGE":
            layout.template_ID(s, "touchup_mask_image", open="image.open")
        else:
            layout.label(text="Erase alpha where to repaint (Paint mode)", icon="BRUSH_DATA")
        rt = runtime.get()
        col = layout.column()
        if rt.board.welcome is not None and not rq.can_inpaint(
                rq.capabilities(rt.board.welcome)):
            col.enabled = False
            layout.label(text="This engine has no inpainting", icon="INFO")
        draw_job(col, "touchup", "Touch Up Region", "zimage.touch_up")


class _ShaderEditor:
    @classmethod
    def poll(cls, context):
        space = context.space_data
        return (_Base.poll.__func__(cls, context) and space is not None
                and getattr(space, "tree_type", "") == "ShaderNodeTree")


PANEL_PARTS = {
    "VIEW3D": (("texture", TexturePanel), ("concept", ConceptPanel), ("loras", LorasPanel),
               ("preview", PreviewPanel), ("history", HistoryPanel)),
    "IMAGE": (("texture", TexturePanel), ("concept", ConceptPanel), ("loras", LorasPanel),
              ("preview", PreviewPanel), ("history", HistoryPanel),
              ("touchup", TouchUpPanel)),
    "NODE": (("texture", TexturePanel),),
}


def _make_panels():
    classes = []
    for space, tag in (("VIEW_3D", "VIEW3D"), ("IMAGE_EDITOR", "IMAGE"),
                       ("NODE_EDITOR", "NODE")):
        main_id = f"ZIMAGE_PT_{tag.lower()}_main"
        extra = (_ShaderEditor,) if tag == "NODE" else ()
        main = type(main_id, extra + (MainPanel, bpy.types.Panel),
                    {"bl_idname": main_id, "bl_space_type": space})
        classes.append(main)
        for part, base in PANEL_PARTS[tag]:
            idname = f"ZIMAGE_PT_{tag.lower()}_{part}"
            classes.append(type(idname, extra + (base, bpy.types.Panel),
                                {"bl_idname": idname, "bl_space_type": space,
                                 "bl_parent_id": main_id}))
    return tuple(classes)


CLASSES = (ZIMAGE_UL_history, ZIMAGE_UL_loras) + _make_panels()
