"""Z-Image Studio: generate textures and concept images in Blender with a local Z-Image engine.

Layout: core/ is bpy-free (job state, history, request building, pixels, engine process);
blender/ is the bpy glue (operators, panels, preferences, timer pump, capture, applying
results); vendor/protocol/ is the project's client library, copied in by
scripts/build_addon.py. This module imports no bpy itself, so core/ can be unit-tested
without Blender.
"""


def register():
    from .blender import registry
    registry.register()


def unregister():
    from .blender import registry
    registry.unregister()
