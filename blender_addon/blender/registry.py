"""One register path for everything, undone in reverse by unregister()."""

from __future__ import annotations

import atexit

import bpy

from . import install, live, operators, panels, project, project_ui, props, pump, runtime

CLASSES = (props.CLASSES + operators.CLASSES + panels.CLASSES + project_ui.CLASSES
           + install.CLASSES + live.CLASSES)


def _at_exit():
    # Blender quitting: stop the engine we own (the stdin pipe also covers crashes) and pip
    install.shutdown()
    runtime.destroy()


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    props.register_props()
    for menu, fn in operators.MENUS:
        getattr(bpy.types, menu).append(fn)
    project_ui.register_props()
    live.register_props()
    runtime.create()
    if runtime.on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(runtime.on_load_pre)
    atexit.register(_at_exit)
    pump.start()


def unregister():
    live.stop("the add-on was disabled")
    project.stop("the add-on was disabled")
    pump.stop()
    atexit.unregister(_at_exit)
    if runtime.on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(runtime.on_load_pre)
    install.shutdown()
    runtime.destroy()
    for menu, fn in operators.MENUS:
        getattr(bpy.types, menu).remove(fn)
    live.unregister_props()
    project_ui.unregister_props()
    props.unregister_props()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
