"""Install Engine / Update Engine / Remove Engine in the preferences.

core/installer.py does the work on a daemon thread (pip runs as a child process); the pump
drains its events on the main thread, so Blender never waits for pip. When an install or
update succeeds, Engine Python and Engine Folder fill themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

from ..core import installer as ins
from . import runtime

ACTION_ITEMS = [(ins.INSTALL, "Install Engine", "Create the engine's environment"),
                (ins.UPDATE, "Update Engine", "Install this add-on's engine version again"),
                (ins.REMOVE, "Remove Engine", "Delete the engine's environment")]


class InstallState:
    """The one install that may run, and what the preferences show about it."""

    def __init__(self):
        self.installer: ins.Installer | None = None
        self.action = ""
        self.fraction = 0.0
        self.message = ""
        self.failure: ins.Failure | None = None
        self.outcome = ""           # "" | "done" | "failed" | "cancelled"
        self.log_path = ""
        self.fractions: list[float] = []    # every fraction seen (tests, a moving bar)

    @property
    def running(self) -> bool:
        return self.installer is not None and self.outcome == ""

    def snapshot(self) -> tuple:
        return (self.running, round(self.fraction, 3), self.message, self.outcome)


_STATE = InstallState()


def state() -> InstallState:
    return _STATE


def engine_wheel() -> str:
    """The engine wheel the add-on zip carries (scripts/build_addon.py puts it there)."""
    wheels = sorted((Path(__file__).resolve().parents[1] / "engine_dist").glob("*.whl"))
    return str(wheels[-1]) if wheels else ""


def install_folder(p) -> Path:
    chosen = bpy.path.abspath(p.engine_install_dir).strip() if p else ""
    return Path(chosen) if chosen else ins.default_folder()


def torch_choice() -> ins.TorchChoice:
    import platform
    gpu, _ = ins.detect_gpu()
    return ins.choose_torch(platform.system(), platform.machine(), gpu)


def begin(action: str, p, *, confirmed: bool = False) -> InstallState:
    """Start an install, update or remove on a worker thread; returns at once."""
    st = _STATE
    if st.running:
        raise RuntimeError("An engine install is already running.")
    folder = install_folder(p)
    rt = runtime.get()
    # an engine started from this folder must stop before its files change
    if rt is not None and rt.engine is not None and \
            _inside(rt.engine.python, folder):
        rt.stop_engine()
    torch_build = {"CPU": "cpu", "PYPI": "pypi"}.get(p.engine_torch, "auto")
    opts = ins.Options(folder=folder, action=action, source=engine_wheel(), extras="engine",
                       torch=torch_build, index_url=p.engine_index_url.strip() or None,
                       confirmed=confirmed)
    st.installer = ins.Installer(opts)
    st.action, st.fraction, st.failure, st.outcome = action, 0.0, None, ""
    st.message = ins.STEP_LABELS["remove" if action == ins.REMOVE else "check"] + "..."
    st.log_path = str(st.installer.log_path)
    st.fractions = [0.0]
    st.installer.start()
    return st


def _inside(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def step() -> bool:
    """Main thread (the pump): apply the installer's events. True when something changed."""
    st = _STATE
    if st.installer is None or st.outcome:
        return False
    changed = False
    for ev in st.installer.events():
        changed = True
        if ev.kind == "progress":
            st.fraction, st.message = ev.fraction, ev.message
            st.fractions.append(ev.fraction)
            continue
        st.outcome, st.message, st.failure = ev.kind, ev.message, ev.failure
        if ev.kind == "done":
            st.fraction = 1.0
            st.fractions.append(1.0)
            _fill_prefs(st)
        from .pump import notify
        notify(ev.message if ev.kind != "failed" or ev.failure is None
               else f"{ev.message} {ev.failure.hint}",
               "INFO" if ev.kind == "done" else "WARNING" if ev.kind == "cancelled"
               else "ERROR")
    return changed


def _fill_prefs(st: InstallState) -> None:
    p = runtime.prefs()
    if p is None or st.installer is None:
        return
    folder = st.installer.folder
    if st.action == ins.REMOVE:
        if _inside(bpy.path.abspath(p.engine_python), folder):
            p.engine_python = ""
        if p.engine_dir and _inside(bpy.path.abspath(p.engine_dir), folder):
            p.engine_dir = ""
        return
    p.engine_python = str(st.installer.python)
    p.engine_dir = str(folder)


def cancel() -> None:
    if _STATE.installer is not None:
        _STATE.installer.cancel()


def shutdown() -> None:
    """Unregister / Blender quitting: stop pip (the worker cleans up a fresh half-install)."""
    cancel()
    inst = _STATE.installer
    if inst is not None:
        inst.join(10.0)


# ---- operators --------------------------------------------------------------------------

class ZIMAGE_OT_engine_install(bpy.types.Operator):
    """Install, update or remove the engine's own Python environment in the Install Folder"""
    bl_idname = "zimage.engine_install"
    bl_label = "Install Engine"
    bl_options = {"INTERNAL"}

    action: EnumProperty(name="Action", items=ACTION_ITEMS, default=ins.INSTALL,
                         description="Install, update or remove the engine")

    @classmethod
    def description(cls, _context, props):
        return {ins.INSTALL: "Create the engine's environment in the Install Folder: PyTorch "
                "for this machine (CUDA, Apple MPS or CPU) and the engine, from PyPI",
                ins.UPDATE: "Install this add-on's engine version into the existing "
                "environment (recreated if it no longer runs)",
                ins.REMOVE: "Delete the engine's environment from the Install Folder (the "
                "downloaded model stays in the Hugging Face cache)"}[props.action]

    @classmethod
    def poll(cls, context):
        return runtime.prefs() is not None and not _STATE.running

    def invoke(self, context, event):
        if self.action == ins.REMOVE:
            return context.window_manager.invoke_confirm(self, event)
        if self.action == ins.INSTALL and runtime.prefs().engine_torch == "AUTO" \
                and torch_choice().confirm:
            return context.window_manager.invoke_props_dialog(self, width=520)
        return self.execute(context)

    def draw(self, _context):       # the CUDA question (Windows with an NVIDIA GPU)
        col = self.layout.column(align=True)
        for line in _wrap(torch_choice().confirm or "", 80):
            col.label(text=line)

    def execute(self, context):
        p = runtime.prefs()
        if self.action != ins.REMOVE and not engine_wheel():
            self.report({"ERROR"}, "This add-on build carries no engine package; rebuild it "
                        "with scripts/build_addon.py.")
            return {"CANCELLED"}
        try:
            # Install: the CUDA question (if any) was answered in invoke's dialog
            begin(self.action, p, confirmed=self.action != ins.REMOVE)
        except RuntimeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        from . import pump
        pump.start()
        return {"FINISHED"}


class ZIMAGE_OT_engine_install_cancel(bpy.types.Operator):
    """Stop the running engine install (a new environment is removed again)"""
    bl_idname = "zimage.engine_install_cancel"
    bl_label = "Cancel Install"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return _STATE.running

    def execute(self, context):
        cancel()
        return {"FINISHED"}


class ZIMAGE_OT_open_install_log(bpy.types.Operator):
    """Open the install log in the system's text viewer"""
    bl_idname = "zimage.open_install_log"
    bl_label = "Open Log"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return bool(_log_path()) and os.path.isfile(_log_path())

    def execute(self, context):
        bpy.ops.wm.path_open(filepath=_log_path())
        return {"FINISHED"}


class ZIMAGE_OT_choose_model(bpy.types.Operator):
    """Choose a model folder (the official layout) or a ComfyUI .safetensors file"""
    bl_idname = "zimage.choose_model"
    bl_label = "Choose Model"
    bl_options = {"INTERNAL"}

    filepath: StringProperty(subtype="FILE_PATH", description="The model folder or file")
    directory: StringProperty(subtype="DIR_PATH", description="The folder being browsed")
    filter_glob: StringProperty(default="*.safetensors", options={"HIDDEN"},
                                description="Files shown")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        p = runtime.prefs()
        path = bpy.path.abspath(self.filepath or self.directory)
        if os.path.isfile(path) and path.lower().endswith(".safetensors"):
            p.model = path
        elif os.path.isdir(path) or os.path.isdir(os.path.dirname(path)):
            # no file picked: the folder (a model in the official layout)
            p.model = path if os.path.isdir(path) else os.path.dirname(path)
        else:
            self.report({"ERROR"}, f"Not a model folder or .safetensors file: {path}")
            return {"CANCELLED"}
        return {"FINISHED"}


def _log_path() -> str:
    if _STATE.log_path:
        return _STATE.log_path
    p = runtime.prefs()
    return str(install_folder(p) / ins.LOG_NAME) if p is not None else ""


def _wrap(text: str, width: int) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width) or [""]


def draw_install(layout, p) -> None:
    """The Engine Install box of the preferences."""
    st = _STATE
    box = layout.box()
    box.label(text="Engine Install", icon="PACKAGE")
    folder = install_folder(p)
    box.prop(p, "engine_install_dir")
    if not p.engine_install_dir.strip():
        box.label(text=f"Default: {folder}")
    info = ins.installed(folder)
    if st.running:
        box.progress(factor=st.fraction, type="BAR", text=st.message or "Installing...")
        box.operator("zimage.engine_install_cancel", icon="CANCEL")
    else:
        row = box.row(align=True)
        if info is None:
            row.operator("zimage.engine_install", text="Install Engine",
                         icon="IMPORT").action = ins.INSTALL
        else:
            box.label(text=f"Installed: torch {info.get('torch')} for {info.get('device')} "
                      f"({info.get('installed', '')})", icon="CHECKMARK")
            row.operator("zimage.engine_install", text="Update Engine",
                         icon="FILE_REFRESH").action = ins.UPDATE
        if info is not None or (folder / ins.VENV_DIR).exists():
            row.operator("zimage.engine_install", text="Remove Engine",
                         icon="TRASH").action = ins.REMOVE
        if st.outcome and st.message:
            icon = {"done": "INFO", "cancelled": "CANCEL"}.get(st.outcome, "ERROR")
            col = box.column(align=True)
            for i, line in enumerate(_wrap(st.message, 90)):
                col.label(text=line, icon=icon if i == 0 else "BLANK1")
            if st.failure is not None:
                for line in _wrap("Try: " + st.failure.hint, 90):
                    col.label(text=line, icon="BLANK1")
    box.operator("zimage.open_install_log", icon="TEXT")
    sub = box.column()
    sub.prop(p, "engine_torch")
    sub.prop(p, "engine_index_url")


CLASSES = (ZIMAGE_OT_engine_install, ZIMAGE_OT_engine_install_cancel,
           ZIMAGE_OT_open_install_log, ZIMAGE_OT_choose_model)
