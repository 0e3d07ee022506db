"""The "Texture from Views" settings, operators and sub-panel (sidebar > Z-Image > Texture)."""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty)

from ..core.jobs import JobState
from . import project, runtime


class ZIMAGE_PG_projection(bpy.types.PropertyGroup):
    views_source: EnumProperty(
        name="Views", default="ORBIT",
        items=[("ORBIT", "Around the Selection", "Views around the selection, and one above"),
               ("COLLECTION", "Cameras of a Collection", "Every camera in a collection")])
    views_around: IntProperty(name="Around", default=4, min=1, max=12,
                              description="Views around the selection")
    view_above: BoolProperty(name="Above", default=True, description="One view from above")
    camera_collection: PointerProperty(name="Cameras", type=bpy.types.Collection)
    texture_size: EnumProperty(name="Texture", default="2048",
                               items=[("1024", "1024", ""), ("2048", "2048", ""),
                                      ("4096", "4096", "")])
    image_size: EnumProperty(name="View Image", default="1024",
                             items=[("256", "256", "Quick trials (the tiny model on a CPU)"),
                                    ("512", "512", ""), ("768", "768", ""),
                                    ("1024", "1024", "")],
                             description="The size of the image generated for each view")
    sharpness: FloatProperty(name="Blend Sharpness", default=2.0, min=0.0, max=8.0,
                             description="How much more a texel counts when seen head-on "
                             "(weight = facing^sharpness)")
    use_depth: BoolProperty(name="Use Depth Control", default=True,
                            description="Follow the view's depth when the engine has a "
                            "ControlNet (else image to image from a shaded capture)")
    view_words: BoolProperty(name="Per-View Words", default=True,
                             description="Add \"front view\", \"back view\", ... to the prompt")


class _ProjectOperator:
    """One run at a time, in its own job slot; `mode` says which views."""
    bl_options = {"REGISTER"}
    mode = "VIEW"

    @classmethod
    def poll(cls, context):
        rt = runtime.get()
        return (rt is not None and project.current() is None
                and rt.board.can_submit(project.SLOT))

    def execute(self, context):
        return project.start(self, context, self.mode)


class ZIMAGE_OT_project_view(_ProjectOperator, bpy.types.Operator):
    """Generate the view (3D view or camera) and bake it into the selected objects' textures"""
    bl_idname = "zimage.project_view"
    bl_label = "Project from View"
    mode = "VIEW"


class ZIMAGE_OT_project_all(_ProjectOperator, bpy.types.Operator):
    """Texture the selected objects from several views that agree, baked into their UV maps"""
    bl_idname = "zimage.project_all"
    bl_label = "Texture All Sides"
    mode = "ALL"


class ZIMAGE_OT_project_cancel(bpy.types.Operator):
    """Stop texturing: nothing is applied"""
    bl_idname = "zimage.project_cancel"
    bl_label = "Cancel"

    def execute(self, context):
        run = project.current()
        if run is not None:
            run.cancel()
        return {"FINISHED"}


class ZIMAGE_PT_projection(bpy.types.Panel):
    bl_label = "Texture from Views"
    bl_idname = "ZIMAGE_PT_view3d_projection"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Z-Image"
    bl_parent_id = "ZIMAGE_PT_view3d_texture"

    @classmethod
    def poll(cls, context):
        return runtime.get() is not None and hasattr(context.scene, "zimage_projection")

    def draw(self, context):
        p = context.scene.zimage_projection
        layout = self.layout
        col = layout.column(align=True)
        col.prop(p, "texture_size")
        col.prop(p, "image_size")
        col.prop(p, "sharpness")
        col.prop(p, "use_depth")
        layout.prop(p, "views_source")
        if p.views_source == "COLLECTION":
            layout.prop(p, "camera_collection")
        else:
            row = layout.row(align=True)
            row.prop(p, "views_around")
            row.prop(p, "view_above", toggle=True)
        layout.prop(p, "view_words")
        run = project.current()
        if run is not None:
            layout.operator("zimage.project_cancel", icon="CANCEL")
            layout.progress(factor=run.progress, type="BAR", text=run.status_text())
        else:
            row = layout.row(align=True)
            row.scale_y = 1.3
            row.operator("zimage.project_view", icon="VIEW_CAMERA")
            row.operator("zimage.project_all", icon="SHADING_TEXTURE")
            last = project.last()
            if last.get("message"):
                ok = last.get("phase") == JobState.SUCCEEDED
                layout.label(text=last["message"][:120], icon="CHECKMARK" if ok else "INFO")
        previews = run.previews if run is not None else []
        if previews:
            grid = layout.grid_flow(columns=3, align=True)
            for name in previews:
                image = bpy.data.images.get(name)
                if image is None:
                    continue
                try:
                    grid.template_icon(icon_value=image.preview_ensure().icon_id, scale=3.0)
                except Exception:
                    grid.label(text=name, icon="IMAGE_DATA")


CLASSES = (ZIMAGE_PG_projection, ZIMAGE_OT_project_view, ZIMAGE_OT_project_all,
           ZIMAGE_OT_project_cancel, ZIMAGE_PT_projection)


def register_props():
    bpy.types.Scene.zimage_projection = PointerProperty(type=ZIMAGE_PG_projection)


def unregister_props():
    project.shutdown()
    del bpy.types.Scene.zimage_projection
