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
    prompt: StringProperty(name="Prompt", description="The prompt of this result")
    seed: IntProperty(name="Seed", min=0, description="The seed of this result")
    steps: IntProperty(name="Steps", description="Denoising steps of this result")
    width: IntProperty(name="Width", description="Width of this result in pixels")
    height: IntProperty(name="Height", description="Height of this result in pixels")
    model: StringProperty(name="Model", description="The engine's model for this result")
    image_name: StringProperty(name="Image", description="The image datablock of this result")
    kind: StringProperty(name="Kind", default="texture",
                         description="Texture, concept image or touch-up")
    created: FloatProperty(name="Created", description="When it was made (Unix time)")
    loras: StringProperty(name="LoRAs", description="The LoRAs used, as JSON [{name, weight}]")


class ZIMAGE_PG_lora(bpy.types.PropertyGroup):
    # `name` (PropertyGroup's own) is the LoRA's name in the engine's list
    use: BoolProperty(name="Use", default=False,
                      description="Apply this LoRA to the next generations")
    weight: FloatProperty(name="Weight", default=1.0, min=-4.0, max=4.0, soft_min=-2.0,
                          soft_max=2.0, step=10,
                          description="How strongly the LoRA changes the image (1 = as "
                          "trained, negative pushes away from it)")
    rank: IntProperty(name="Rank", description="The LoRA's rank (size)")
    trigger_words: StringProperty(name="Trigger Words",
                                  description="Words the LoRA was trained with (from its file)")
    offered: BoolProperty(name="Offered", default=True,
                          description="The connected engine lists this LoRA")


class ZIMAGE_PG_settings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to generate",
                           default="weathered red brick wall texture")
    size_preset: EnumProperty(name="Size", items=SIZE_ITEMS, default="1024",
                              update=_apply_preset,
                              description="Image size in pixels: a preset, the camera's "
                              "aspect, or Width and Height below")
    width: IntProperty(name="Width", default=1024, min=16, max=4096, step=16,
                       subtype="PIXEL", description="Image width in pixels (a multiple of "
                       "16; with Match Camera Aspect, sets the pixel count)")
    height: IntProperty(name="Height", default=1024, min=16, max=4096, step=16,
                        subtype="PIXEL", description="Image height in pixels (a multiple of "
                        "16; with Match Camera Aspect, sets the pixel count)")
    steps: IntProperty(name="Steps", default=8, min=1, max=50,
                       description="Denoising steps (Z-Image-Turbo: 8-9)")
    seed_random: BoolProperty(name="Random Seed", default=True,
                              description="Draw a new seed for every generation")
    seed: IntProperty(name="Seed", default=0, min=0, max=MAX_SEED,
                      description="The same seed, prompt and size give the same image")
    num_images: IntProperty(name="Images", default=1, min=1, max=4,
                            description="Images per generation (seeds seed, seed+1, ...)")
    texture_target: EnumProperty(
        name="Apply To", default="NEW_MATERIAL",
        description="Where the texture goes",
        items=[("NEW_MATERIAL", "New Material",
                "A new material in a new slot; the faces of the active slot (in Edit Mode: "
                "the selected faces) use it (Principled BSDF Base Color)"),
               ("IMAGE_NODE", "Selected Image Node",
                "The active Image Texture node of the active object's material")])
    texture_objects: EnumProperty(
        name="Objects", default="ACTIVE",
        description="Which objects get the texture",
        items=[("ACTIVE", "Active Object", "Only the active object"),
               ("SELECTED_SHARED", "Selected, One Material",
                "Every selected mesh object gets the same new image and material"),
               ("SELECTED_EACH", "Selected, One Each",
                "Every selected mesh object gets its own image (seeds seed, seed+1, ...) "
                "and material")])
    seamless: EnumProperty(
        name="Seamless", default="NONE",
        description="Make the texture tile without visible seams (needs an engine with "
        "seamless tiling)",
        items=[("NONE", "Off", "A plain image"),
               ("X", "X", "Tiles left to right"),
               ("Y", "Y", "Tiles top to bottom"),
               ("XY", "X and Y", "Tiles in both directions")])
    concept_source: EnumProperty(
        name="Capture", default="CAMERA",
        description="What the concept image starts from",
        items=[("CAMERA", "Camera", "Capture through the scene camera (quick Workbench "
                "render)"),
               ("VIEW", "Current View", "Capture the 3D viewport as it is seen"),
               ("RENDER", "Render", "Render through the scene camera with the scene's own "
                "render engine (EEVEE, Cycles); depth from the render's Depth pass")])
    concept_match_camera: BoolProperty(
        name="Match Camera Aspect", default=True,
        description="Concept images take the camera's aspect ratio, with about as many "
        "pixels as the size above")
    concept_context: EnumProperty(
        name="Use Capture As", default="IMG2IMG",
        description="How the capture guides the image",
        items=[("NONE", "Nothing", "Prompt only"),
               ("IMG2IMG", "Image to Image", "Start from the captured colours"),
               ("DEPTH", "Depth Control", "Follow the captured depth")])
    strength: FloatProperty(name="Strength", default=0.6, min=0.0, max=1.0,
                            description="How much the result may differ from the capture")
    control_scale: FloatProperty(name="Depth Strength", default=0.75, min=0.0, max=2.0,
                                 description="How closely to follow the depth")
    concept_placement: EnumProperty(
        name="Place In", default="IMAGE_EDITOR",
        description="Where the concept image goes",
        items=[("IMAGE_EDITOR", "Image Editor", "Show the result in the Image Editor"),
               ("REFERENCE", "Reference Image", "Add an image empty in front of the view"),
               ("CAMERA_BG", "Camera Background", "Use as the camera's background image")])
    touchup_mask: EnumProperty(
        name="Mask", default="ALPHA",
        description="Which part of the image to repaint",
        items=[("ALPHA", "Erased Alpha", "Where the image is transparent (paint with the "
                "Erase Alpha brush in Texture Paint or the Image Editor)"),
               ("IMAGE", "Mask Image", "White areas of a separate mask image")])
    touchup_mask_image: PointerProperty(
        type=bpy.types.Image, name="Mask Image",
        description="Grey image, white where to repaint (same size as the texture)")
    loras: CollectionProperty(type=ZIMAGE_PG_lora,
                              description="The engine's LoRAs, with use and weight")
    lora_index: IntProperty(name="LoRA", default=0, description="The selected LoRA")
    history: CollectionProperty(type=ZIMAGE_PG_history_item,
                                description="Results made in this file")
    history_index: IntProperty(name="History", default=0, description="The selected result")


class ZIMAGE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    address: StringProperty(name="Engine Address", default="tcp://127.0.0.1:5555",
                            description="Where the engine listens (TCP on loopback, or "
                            "another machine with CurveZMQ keys)")
    curve_server_key: StringProperty(
        name="Server Public Key", subtype="FILE_PATH",
        description="The engine's public key file (server.key from `engine keys`); with "
        "Client Secret Key, for an engine started with --curve-dir")
    curve_client_key: StringProperty(
        name="Client Secret Key", subtype="FILE_PATH",
        description="This machine's secret key file (clients/NAME.key_secret from "
        "`engine keys`)")
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
    engine_install_dir: StringProperty(
        name="Install Folder", subtype="DIR_PATH",
        description="Where Install Engine puts the engine's environment (empty: a folder in "
        "your user data directory)")
    engine_torch: EnumProperty(
        name="PyTorch Build", default="AUTO",
        description="Which PyTorch Install Engine installs",
        items=[("AUTO", "For This Machine", "CUDA with an NVIDIA GPU, MPS on Apple silicon, "
                "else the CPU build"),
               ("CPU", "CPU Only", "The CPU build (no GPU driver needed; slow)"),
               ("PYPI", "Package Index As Is", "Whatever the package index (or your company's "
                "mirror) offers, without PyTorch's own index")])
    engine_index_url: StringProperty(
        name="Package Index", default="",
        description="A PyPI mirror for Install Engine (empty: PyPI, or pip's own settings)")
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
        row = box.row(align=True)
        row.active = not self.standin
        row.prop(self, "model")
        row.operator("zimage.choose_model", text="", icon="FILEBROWSER")
        box.prop(self, "extra_args")
        box.prop(self, "auto_start")
        from .install import draw_install
        draw_install(layout, self)
        box = layout.box()
        box.label(text="Serving Other Machines (CurveZMQ)", icon="LOCKED")
        box.prop(self, "curve_server_key")
        box.prop(self, "curve_client_key")
        box = layout.box()
        box.label(text="Developer", icon="CONSOLE")
        box.prop(self, "standin")


CLASSES = (ZIMAGE_PG_history_item, ZIMAGE_PG_lora, ZIMAGE_PG_settings, ZIMAGE_AP_preferences)


def sync_loras(welcome) -> None:
    """The engine's LoRA list into every scene's settings: new names appear (off, weight 1),
    known ones keep the artist's choice, names the engine no longer offers are marked."""
    from ..core.requests import engine_loras
    offered = {d["name"]: d for d in engine_loras(welcome)}
    for scene in bpy.data.scenes:
        s = getattr(scene, "zimage", None)
        if s is None:
            continue
        have = {item.name: item for item in s.loras}
        for name, d in offered.items():
            item = have.get(name)
            if item is None:
                item = s.loras.add()
                item.name = name
            item.rank, item.trigger_words, item.offered = d["rank"], d["trigger_words"], True
        for name, item in have.items():
            if name not in offered and item.offered:
                item.offered = False


def register_props():
    bpy.types.Scene.zimage = PointerProperty(type=ZIMAGE_PG_settings)


def unregister_props():
    del bpy.types.Scene.zimage
