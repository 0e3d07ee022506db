"""Scene settings, the history list, and the add-on preferences."""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty,
                       IntProperty, PointerProperty, StringProperty)

from ..core.requests import MAX_SEED, PRESET_SIZES, SIZE_PRESETS
from . import ADDON_ID

SIZE_ITEMS = [(key, label, f"{w} x {h} pixels") for key, label, w, h in SIZE_PRESETS] + [
    ("CAMERA", "Match Camera Aspect",
     "The render's aspect ratio, with about as many pixels as Width x Height"),
    ("CUSTOM", "Custom", "Width and height below (multiples of 16)"),
]


def _apply_preset(self, _context):
    if self.size_preset in PRESET_SIZES:
        w, h = PRESET_SIZES[self.size_preset]
        if (self.width, self.height) != (w, h):
            self.width, self.height = w, h


class ZIMAGE_PG_history_item(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt")
    seed: IntProperty(name="Seed", min=0)
    steps: IntProperty(name="Steps")
    width: IntProperty(name="Width")
    height: IntProperty(name="Height")
    model: StringProperty(name="Model")
    image_name: StringProperty(name="Image")
    kind: StringProperty(name="Kind", default="texture")
    created: FloatProperty(name="Created")


class ZIMAGE_PG_settings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to generate",
                           default="weathered red brick wall, seamless texture")
    size_preset: EnumProperty(name="Size", items=SIZE_ITEMS, default="1024",
                              update=_apply_preset)
    width: IntProperty(name="Width", default=1024, min=16, max=4096, step=16,
                       subtype="PIXEL")
    height: IntProperty(name="Height", default=1024, min=16, max=4096, step=16,
                        subtype="PIXEL")
    steps: IntProperty(name="Steps", default=8, min=1, max=50,
                       description="Denoising steps (Z-Image-Turbo: 8-9)")
    seed_random: BoolProperty(name="Random Seed", default=True,
                              description="Draw a new seed for every generation")
    seed: IntProperty(name="Seed", default=0, min=0, max=MAX_SEED)
    num_images: IntProperty(name="Images", default=1, min=1, max=4,
                            description="Images per generation (seeds seed, seed+1, ...)")
    texture_target: EnumProperty(
        name="Apply To", default="NEW_MATERIAL",
        items=[("NEW_MATERIAL", "New Material",
                "A new material on the active object (Principled BSDF Base Color)"),
               ("IMAGE_NODE", "Selected Image Node",
                "The active Image Texture node of the active object's material")])
    concept_source: EnumProperty(
        name="Capture", default="CAMERA",
        items=[("CAMERA", "Camera", "Capture through the scene camera"),
               ("VIEW", "Current View", "Capture the 3D viewport as it is seen")])
    concept_context: EnumProperty(
        name="Use Capture As", default="IMG2IMG",
        items=[("NONE", "Nothing", "Prompt only"),
               ("IMG2IMG", "Image to Image", "Start from the captured colours"),
               ("DEPTH", "Depth Control", "Follow the captured depth")])
    strength: FloatProperty(name="Strength", default=0.6, min=0.0, max=1.0,
                            description="How much the result may differ from the capture")
    control_scale: FloatProperty(name="Control", default=0.75, min=0.0, max=2.0,
                                 description="How closely to follow the depth")
    concept_placement: EnumProperty(
        name="Place In", default="IMAGE_EDITOR",
        items=[("IMAGE_EDITOR", "Image Editor", "Show the result in the Image Editor"),
               ("REFERENCE", "Reference Image", "Add an image empty in front of the view"),
               ("CAMERA_BG", "Camera Background", "Use as the camera's background image")])
    history: CollectionProperty(type=ZIMAGE_PG_history_item)
    history_index: IntProperty(name="History", default=0)


class ZIMAGE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    address: StringProperty(name="Engine Address", default="tcp://127.0.0.1:5555",
                            description="Where the engine listens (use TCP on loopback)")
    engine_python: StringProperty(name="Engine Python", subtype="FILE_PATH",
                                  description="The Python of the engine's environment, e.g. "
                                  ".venv/bin/python (not Blender's)")
    engine_dir: StringProperty(name="Engine Folder", subtype="DIR_PATH",
                               description="Folder to start the engine in (the checkout, when "
                               "the engine is not installed into its environment)")
    model: StringProperty(name="Model", default="Tongyi-MAI/Z-Image-Turbo",
                          description="Model folder, Hugging Face id or ComfyUI file")
    standin: BoolProperty(name="Stand-in Pipeline", default=False,
                          description="Test patterns instead of a model (for trying the "
                          "add-on without a GPU)")
    extra_args: StringProperty(name="Extra Arguments", default="",
                               description="More `engine serve` arguments")
    auto_start: BoolProperty(name="Start Engine When Generating", default=True,
                             description="Start the local engine on Generate when none answers "
                             "and an engine Python is set")

    def draw(self, context):
        from .panels import draw_connection
        layout = self.layout
        draw_connection(layout, context, prefs_view=True)
        col = layout.column()
        col.prop(self, "address")
        box = layout.box()
        box.label(text="Local Engine", icon="CONSOLE")
        box.prop(self, "engine_python")
        box.prop(self, "engine_dir")
        row = box.row()
        row.active = not self.standin
        row.prop(self, "model")
        box.prop(self, "standin")
        box.prop(self, "extra_args")
        box.prop(self, "auto_start")


CLASSES = (ZIMAGE_PG_history_item, ZIMAGE_PG_settings, ZIMAGE_AP_preferences)


def register_props():
    bpy.types.Scene.zimage = PointerProperty(type=ZIMAGE_PG_settings)


def unregister_props():
    del bpy.types.Scene.zimage
