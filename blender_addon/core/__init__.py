"""bpy-free logic of the add-on: job state, history, request building, pixel conversion,
engine process supervision and error messages. Nothing here imports bpy, so it is unit-tested
with plain pytest (tests/blender_addon/test_core_*.py)."""
