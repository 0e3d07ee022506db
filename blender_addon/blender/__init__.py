"""bpy glue. Everything here runs on Blender's main thread."""

# the extension's package (bl_ext.<repo>.<id>): preferences are registered under it
ADDON_ID = __package__.rpartition(".")[0]
