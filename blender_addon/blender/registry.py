"""One register path for everything, undone in reverse by unregister()."""

from __future__ import annotations

import atexit

import bpy

from . import operators, panels, project_ui, props, pump, runtime

CLASSES = props.CLASSES + operators.CLASSES + panels.CLASSES + project_ui.CLASSES


def _at_exit():
    # Blender quitting: stop the engine we own (the stdin pipe also covers crashes)
    runtime.destroy()


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    props.register_props()
    project_ui.register_props()
    runtime.create()
    atexit.register(_at_exit)
    pump.start()


def unregister():
    pump.stop()
    atexit.unregister(_at_exit)
    runtime.destroy()
    project_ui.unregister_props()
    props.unregister_props()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
