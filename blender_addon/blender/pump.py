"""The main-thread pump: a bpy.app.timers function that drains the client's events.

It never raises (an exception would silently unregister the timer), handles each effect in
its own try, ticks fast while something runs and slowly when idle, and redraws only when what
the panels draw has changed. Timers do not fire in background mode; tests call tick().
"""

from __future__ import annotations

import logging

import bpy

from ..core.jobs import JobState
from . import install, runtime

log = logging.getLogger(__name__)

BUSY_INTERVAL = 0.1
IDLE_INTERVAL = 0.5


def tick():
    rt = runtime.get()
    if rt is None:
        return None                     # unregistered: stop
    try:
        effects = rt.step()
    except Exception:
        log.exception("Z-Image pump")
        effects = []
    try:
        install.step()
    except Exception:
        log.exception("Z-Image install")
    for eff in effects:
        try:
            handle_effect(eff)
        except Exception as exc:
            log.exception("Z-Image: %s effect", eff.kind)
            if eff.job.active or eff.kind == "result":
                rt.board.fail(eff.job, "apply_failed", str(exc))
    try:
        welcome = rt.board.welcome
        if welcome is not None and welcome is not rt.loras_synced:
            rt.loras_synced = welcome       # a new welcome (e.g. new LoRA files): list them
            from .props import sync_loras
            sync_loras(welcome)
            redraw()
    except Exception:
        log.exception("Z-Image LoRA list")
    try:
        snap = (rt.board.snapshot(), rt.connection, rt.engine_state, rt.notice,
                install.state().snapshot(),
                ((rt.board.welcome or {}).get("engine") or {}).get("download"))
        if snap != rt.last_snapshot:
            rt.last_snapshot = snap
            redraw()
    except Exception:
        log.exception("Z-Image redraw")
    return BUSY_INTERVAL if rt.busy or install.state().running else IDLE_INTERVAL


def handle_effect(eff) -> None:
    from . import apply, project
    rt = runtime.get()
    if project.handle_effect(eff):          # a view of a projection run
        return
    if eff.kind == "preview":
        apply.update_preview(eff.job.preview, runtime.user_dir())
    elif eff.kind == "result":
        ok = False
        try:
            # undo=True: an operator run from Python pushes no undo step by itself; without
            # one, Ctrl+Z would take the result together with the user's previous action
            ok = "FINISHED" in bpy.ops.zimage.apply_result("EXEC_DEFAULT", True,
                                                           slot=eff.job.slot)
        except RuntimeError:
            # no usable context for the operator (e.g. a timer without a window): apply
            # directly and push the undo step ourselves
            from .operators import apply_job
            ok = apply_job(bpy.context, eff.job)
            if ok:
                try:
                    bpy.ops.ed.undo_push(message="Z-Image: apply result")
                except Exception:
                    pass
        if not ok and eff.job.phase not in (JobState.FAILED, JobState.SUCCEEDED):
            rt.board.fail(eff.job, "apply_failed")
        if eff.job.error is not None:
            notify(eff.job.error.text)
    elif eff.kind == "failed":
        notify(eff.job.error.text if eff.job.error else "The job failed.")


def notify(text: str, level: str = "ERROR") -> None:
    """A message in the status bar / Info log (operators can report; timers cannot)."""
    try:
        bpy.ops.zimage.report(message=text, level=level)
    except Exception:
        log.warning("Z-Image: %s", text)


def redraw() -> None:
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else []):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "IMAGE_EDITOR", "PREFERENCES", "STATUSBAR"):
                area.tag_redraw()


def start() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.1, persistent=True)


def stop() -> None:
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
