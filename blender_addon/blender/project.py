"""Project from View / Texture All Sides: the bpy glue around core.projection.

Blender does what it is good at: evaluating meshes (loop triangles, corner normals, UVs),
Smart UV Project, the shaded capture. The numpy work (texel maps, depth, projection, blending,
margins, PNG encoding) runs on one worker thread, so Blender's main thread only hands data over
and applies the finished images; a timer (`tick`, driven directly by tests in background mode)
moves the run along:

    preparing view k (worker) -> generating view k (engine job) -> absorbing view k (worker)
    -> ... -> finishing (worker: blend, fill margins, encode) -> apply (main thread, one undo)

Nothing touches the user's data before the apply: a new UV map is made on a temporary copy
and only written to the mesh when the result is applied, so a cancel applies nothing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import bpy
import numpy as np

from ..core import pixels
from ..core import projection as pj
from ..core import projection_jobs as pjobs
from ..core import requests as rq
from ..core.errors import explain
from ..core.history import Record
from ..core.jobs import JobState
from . import apply, capture, pump, runtime
from .project_scene import (UV_NAME, camera_view, framing, mesh_triangles, orbit_views,
                            smart_uv, temp_camera, viewport_view)

log = logging.getLogger(__name__)

SLOT = "projection"         # its own job slot: Generate Texture stays free meanwhile
CONNECT_WAIT = 60.0         # seconds a run waits for the engine's welcome (a starting engine)
VIEW_PREVIEW = "Z-Image View {}"

_RUN: "Run | None" = None
_LAST: dict = {}                 # the last run's outcome, for the panel and tests


def current() -> "Run | None":
    return _RUN


def last() -> dict:
    return _LAST


# ---- the run -------------------------------------------------------------------------------

class Target:
    """One mesh to texture (linked duplicates share it)."""

    def __init__(self, obj, mesh: pj.Mesh, uv_name: str | None, new_uv: np.ndarray | None,
                 size: int, previous=None, previous_coverage=None, faces=None):
        self.object = obj.name
        self.mesh_name = obj.data.name
        self.topology = (len(obj.data.polygons), len(obj.data.loops))
        self.faces = faces          # the faces selected in Edit Mode, else None: active slot
        self.mesh = mesh
        self.uv_name = uv_name
        self.new_uv = new_uv
        self.size = size
        self.previous = previous
        self.previous_coverage = previous_coverage
        self.texels: pj.TexelMap | None = None
        self.bake: pj.Bake | None = None
        self.image_png: bytes | None = None
        self.coverage_png: bytes | None = None


class Run:
    def __init__(self, scene, targets: list[Target], views: list[pj.View], words: list[str],
                 settings: pjobs.ProjectionSettings, sharpness: float, first_init: bytes | None,
                 summary: dict):
        self.scene = scene.name
        self.targets = targets
        self.views = views
        self.words = words
        self.settings = settings
        self.sharpness = sharpness
        self.first_init = first_init          # shaded capture (img2img without ControlNet)
        self.summary = summary
        self.index = 0
        self.waiting_since = time.monotonic()
        self.phase = pjobs.PREPARING
        self.future = None
        self.prepared: dict = {}               # the current view's raster and PNGs
        self.job = None
        self.message = "Preparing"
        self.error: str | None = None
        self.requests: list[dict] = []          # what was sent, per view (for the panel, tests)
        self.previews: list[str] = []
        self.t_last_image: float | None = None
        self.t_applied: float | None = None
        self.images: list[str] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zimage-project")
        self._combined = pj.Mesh.concat([t.mesh for t in targets])
        self._offsets = np.cumsum([0] + [len(t.mesh) for t in targets])
        self.future = self._pool.submit(self._prepare, 0)

    # ---- worker-thread parts (numpy only; no bpy) -----------------------------------------
    def _prepare(self, k: int) -> dict:
        if k == 0:
            for t in self.targets:
                t.texels = pj.texel_map(t.mesh, t.size)
                t.bake = pj.Bake(t.texels, t.previous, t.previous_coverage)
        view = self.views[k]
        raster = pj.render_depth(self._combined, view)
        depth = pj.depth_image(raster.depth)
        out = {"raster": raster, "depth_png": _png_grey_rgb(depth)}
        if k > 0:
            image, mask = self._render_so_far(view, raster)
            out["init_png"] = pixels.encode_png(image.tobytes(), view.width, view.height, 3)
            out["mask_png"] = pixels.encode_png(mask.tobytes(), view.width, view.height, 1)
            out["init"], out["mask"] = image, mask
        return out

    def _render_so_far(self, view: pj.View, raster: pj.Raster):
        image = np.full((view.height, view.width, 3), round(pj.NEUTRAL * 255), np.uint8)
        mask = np.zeros((view.height, view.width), np.uint8)
        for t, lo, hi in zip(self.targets, self._offsets[:-1], self._offsets[1:]):
            mine = (raster.tri >= lo) & (raster.tri < hi)
            if not mine.any():
                continue
            sub = pj.Raster(np.where(mine, raster.tri - lo, -1).astype(np.int32), raster.bary)
            img, msk = pj.render_texture(t.mesh, view, sub, t.bake.texture(),
                                         t.bake.coverage_map())
            image[mine], mask[mine] = img[mine], msk[mine]
        return image, mask

    def _absorb(self, k: int, rgb: np.ndarray, raster: pj.Raster) -> None:
        for t in self.targets:
            t.bake.add(pj.project(t.texels, self.views[k], raster.depth, rgb, self.sharpness))

    def _finish(self, record: Record) -> None:
        for t in self.targets:
            tex = pj.fill_margins(t.bake.texture(), t.texels.valid)
            rgb8 = np.clip(np.round(tex * 255.0), 0, 255).astype(np.uint8)[::-1]   # top-down
            t.image_png = pixels.encode_png(np.ascontiguousarray(rgb8).tobytes(), t.size,
                                            t.size, 3,
                                            text={"parameters": record.parameters_json()},
                                            level=1)
            cov = np.clip(np.round(t.bake.coverage_map() * 255.0), 0, 255).astype(np.uint8)
            t.coverage_png = pixels.encode_png(np.ascontiguousarray(cov[::-1]).tobytes(),
                                               t.size, t.size, 1, level=1)

    # ---- main thread -------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self.views)

    @property
    def progress(self) -> float:
        job = self.job
        inner = job.progress if job is not None and self.phase == pjobs.GENERATING else (
            1.0 if self.phase in (pjobs.ABSORBING, pjobs.FINISHING) else 0.0)
        return min(1.0, (self.index + inner) / max(1, self.count))

    def status_text(self) -> str:
        if self.phase == pjobs.GENERATING and self.job is not None:
            return f"View {self.index + 1}/{self.count}: {self.job.status_text()}"
        if self.phase == pjobs.FINISHING:
            return "Baking"
        return f"View {self.index + 1}/{self.count}: {self.message}"

    def step(self) -> None:
        """Move the run along (called by the timer)."""
        rt = runtime.get()
        if self.phase in (pjobs.PREPARING, pjobs.ABSORBING, pjobs.FINISHING):
            if not self.future.done():
                return
            try:
                result = self.future.result()
            except Exception as exc:
                log.exception("Z-Image projection")
                return self._end(JobState.FAILED, f"Projection failed: {exc}")
            if self.phase == pjobs.PREPARING:
                if rt.connection != "connected" or rt.board.welcome is None:
                    if time.monotonic() - self.waiting_since > CONNECT_WAIT:
                        return self._end(JobState.FAILED, explain("engine_unreachable").text)
                    self.message = "Waiting for the engine"
                    return
                self._submit(result)
            elif self.phase == pjobs.ABSORBING:
                self.index += 1
                if self.index < self.count:
                    self.phase, self.message = pjobs.PREPARING, "Preparing"
                    self.future = self._pool.submit(self._prepare, self.index)
                else:
                    self.phase = pjobs.FINISHING
                    self.future = self._pool.submit(self._finish, self._record(rt))
            else:
                self._apply(rt)
            return
        if self.phase == pjobs.GENERATING:
            job = self.job
            if job.phase in (JobState.CANCELLED, JobState.FAILED):
                text = (job.error.text if job.error else None) or job.message
                return self._end(job.phase, text)

    def _submit(self, prepared: dict) -> None:
        rt = runtime.get()
        k = self.index
        self.prepared = prepared
        limits = rq.EngineLimits.from_welcome(rt.board.welcome)
        caps = rq.capabilities(rt.board.welcome)
        try:
            first = k == 0
            request = pjobs.view_request(
                self.settings, limits, caps, first=first, words=self.words[k],
                depth_png=prepared["depth_png"],
                init_png=self.first_init if first else prepared.get("init_png"),
                mask_png=prepared.get("mask_png"))
        except rq.RequestError as exc:
            return self._end(JobState.FAILED, explain(exc.code, exc.detail).text)
        if rt.client is None or not rt.board.can_submit(SLOT):
            return self._end(JobState.FAILED, "The engine is not connected")
        job_id = rt.client.submit(request.params, request.blobs or None, result_format="raw",
                                  preview_every=1, preview_max_side=256)
        self.job = rt.board.submit(SLOT, job_id, request.params,
                                   {"projection": True, "scene": self.scene,
                                    "view": k})
        self.requests.append({"params": dict(request.params),
                              "blobs": sorted(request.blobs)})
        self.phase = pjobs.GENERATING
        pump.start()

    def on_result(self, eff) -> None:
        """The engine's image for the current view (from the pump)."""
        rt = runtime.get()
        job = eff.job
        if job is not self.job or self.phase != pjobs.GENERATING:
            return
        img = job.images[0]
        w, h = img.width, img.height
        view = self.views[self.index]
        rgb = np.frombuffer(img.to_rgb_bytes(), np.uint8).reshape(h, w, 3)
        if (w, h) != (view.width, view.height):
            return self._end(JobState.FAILED, f"The engine answered {w}x{h}, not "
                                              f"{view.width}x{view.height}")
        self._show_view(job, rgb)
        rt.board.complete(job)
        job.message = f"View {self.index + 1} of {self.count} done"
        if self.index == self.count - 1:
            self.t_last_image = time.perf_counter()
        self.phase, self.message = pjobs.ABSORBING, "Projecting"
        self.future = self._pool.submit(self._absorb, self.index, rgb, self.prepared["raster"])

    def _show_view(self, job, rgb: np.ndarray) -> None:
        """Each view's image as a small packed preview ("Z-Image View k")."""
        encoded = job.context.pop("encoded", None)
        if encoded:
            png = encoded[0][1]
        else:
            png = pixels.encode_png(rgb.tobytes(), rgb.shape[1], rgb.shape[0], 3, level=1)
        name = VIEW_PREVIEW.format(self.index + 1)
        old = bpy.data.images.get(name)
        if old is not None:
            bpy.data.images.remove(old)
        image = bpy.data.images.new(name, rgb.shape[1], rgb.shape[0], alpha=False)
        image.pack(data=png, data_len=len(png))
        image.source = "FILE"
        self.previews.append(image.name)

    def _record(self, rt) -> Record:
        s = self.settings
        model = str(((rt.board.welcome or {}).get("engine") or {}).get("model") or "")
        size = self.targets[0].size
        return Record(prompt=s.prompt, seed=s.seed, steps=s.steps, width=size, height=size,
                      model=model, kind="texture")

    def _apply(self, rt) -> None:
        """Images, UV maps, materials and history for every target: all or nothing, and
        one undo step."""
        scene = bpy.data.scenes.get(self.scene) or bpy.context.scene
        record = self._record(rt)
        tx = apply.Transaction()
        try:
            records, applied, lost = [], [], []
            for t in self.targets:
                obj = bpy.data.objects.get(t.object)
                why = _gone(obj, t)
                if why:                  # the others still get theirs
                    lost.append(f"{t.object} ({why})")
                    continue
                applied.append(t)
                uv_name = t.uv_name
                if t.new_uv is not None:
                    layer = obj.data.uv_layers.new(name=UV_NAME)
                    tx.changed(lambda me=obj.data, n=layer.name: me.uv_layers.remove(
                        me.uv_layers[n]))
                    layer.uv.foreach_set("vector", t.new_uv.astype(np.float32).ravel())
                    obj.data.uv_layers.active = layer
                    layer.active_render = True
                    uv_name = layer.name
                rec = Record(**{**record.__dict__})
                name = rq.image_name(f"{t.object} {record.prompt}", record.seed)
                image = _packed_image(tx, name, t.size, t.image_png, "sRGB")
                cov = _packed_image(tx, f"{image.name} coverage"[:63], t.size, t.coverage_png,
                                    "Non-Color")
                for key, value in rec.image_props().items():
                    image[key] = value
                image["zimage_coverage"] = cov.name
                # fake users: saving drops images nothing uses (the coverage always; the
                # texture once its material is gone, while the history still lists it)
                apply.keep_image(tx, cov)
                apply.keep_image(tx, image)
                image["zimage_views"] = self.count
                rec.image_name = image.name
                mat = apply.new_texture_material(tx, image)
                _wire_uv_map(mat, uv_name)
                apply.assign_material(tx, obj, mat, faces=t.faces)
                records.append(rec)
                self.images.append(image.name)
            if not applied:
                return self._end(JobState.FAILED, f"Nothing was applied: {', '.join(lost)}")
            apply.add_history(scene, records)
        except Exception as exc:
            log.exception("Z-Image: applying the projection failed")
            tx.rollback()
            self.images.clear()
            return self._end(JobState.FAILED, f"Applying the texture failed: {exc}")
        try:
            bpy.ops.ed.undo_push(message="Z-Image: texture from views")
        except Exception:
            pass
        self.t_applied = time.perf_counter()
        covered = float(np.mean([t.bake.covered_fraction() for t in applied]))
        text = pjobs.run_summary([t.object for t in applied], self.summary["created_uv"],
                                 self.summary["shared"], self.summary["skipped"], covered,
                                 self.count, self.summary["linked"], lost)
        self._end(JobState.SUCCEEDED, text)

    def _end(self, phase: JobState, message: str) -> None:
        global _RUN
        self.phase, self.message = phase, message
        if phase != JobState.SUCCEEDED:
            for name in self.previews:           # nothing of a failed run stays behind
                image = bpy.data.images.get(name)
                if image is not None:
                    bpy.data.images.remove(image)
            self.previews.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        _LAST.clear()
        _LAST.update(phase=phase, message=message, images=list(self.images),
                     requests=self.requests, views=self.count,
                     apply_seconds=(self.t_applied - self.t_last_image)
                     if self.t_applied and self.t_last_image else None)
        if _RUN is self:
            _RUN = None
        if phase == JobState.FAILED:
            pump.notify(message)
        pump.redraw()

    def cancel(self, message: str = "Cancelled: nothing was applied") -> None:
        rt = runtime.get()
        if self.phase == pjobs.GENERATING and self.job is not None and self.job.active:
            job_id = rt.board.cancel(SLOT)
            if job_id and rt.client is not None:
                rt.client.cancel(job_id)
        self._end(JobState.CANCELLED, message)


def _png_grey_rgb(grey: np.ndarray) -> bytes:
    h, w = grey.shape
    return pixels.encode_png(np.repeat(grey[..., None], 3, 2).tobytes(), w, h, 3, level=1)


def _gone(obj, t: Target) -> str | None:
    """Why the texture can no longer go on the object it was baked for, if it cannot."""
    if obj is None:
        return "deleted or renamed while texturing"
    if obj.type != "MESH" or obj.data is None or obj.data.name != t.mesh_name:
        return "its mesh was replaced while texturing"
    if (len(obj.data.polygons), len(obj.data.loops)) != t.topology:
        return "its mesh was edited while texturing"
    return None


def _packed_image(tx, name: str, size: int, png: bytes, colorspace: str):
    image = tx.created(bpy.data.images, bpy.data.images.new(name, size, size, alpha=False))
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    image.file_format = "PNG"
    image.colorspace_settings.name = colorspace
    image.alpha_mode = "NONE"
    return image


def _wire_uv_map(mat, uv_name: str) -> None:
    """The texture reads the UV map it was baked for, whichever map renders by default."""
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    tex = next(n for n in nodes if n.type == "TEX_IMAGE")
    uv = nodes.new("ShaderNodeUVMap")
    uv.uv_map = uv_name
    uv.location = (tex.location.x - 220, tex.location.y)
    links.new(uv.outputs["UV"], tex.inputs["Vector"])


def _selected_faces(obj) -> list[int] | None:
    """The faces selected in Edit Mode (read in Object Mode), or None when there are none."""
    sel = np.zeros(len(obj.data.polygons), bool)
    obj.data.polygons.foreach_get("select", sel)
    return np.flatnonzero(sel).tolist() or None


def _previous_texture(obj, size: int):
    """(pixels (S,S,3) bottom-up, coverage (S,S)) when the object's active material is an
    earlier projection of this size: projecting again adds to it."""
    mat = obj.active_material
    node = apply.find_image_node(mat) if mat is not None else None
    if node is None and mat is not None and mat.node_tree is not None:
        node = next((n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE"), None)
    image = node.image if node is not None else None
    if image is None or "zimage_coverage" not in image or tuple(image.size) != (size, size):
        return None, None
    cov_image = bpy.data.images.get(image["zimage_coverage"])
    if cov_image is None or tuple(cov_image.size) != (size, size):
        return None, None
    px = np.empty(size * size * 4, np.float32)
    image.pixels.foreach_get(px)
    cv = np.empty(size * size * 4, np.float32)
    cov_image.pixels.foreach_get(cv)
    return px.reshape(size, size, 4)[..., :3], cv.reshape(size, size, 4)[..., 0]


# ---- starting a run ------------------------------------------------------------------------

def start(op, context, mode: str) -> set:
    """mode: "VIEW" (one view: the 3D view when there is one, else the active camera) or
    "ALL" (the views set in the panel)."""
    global _RUN
    rt = runtime.get()
    scene = context.scene
    p = scene.zimage_projection
    s = scene.zimage
    if rt is None:
        return {"CANCELLED"}
    if _RUN is not None or not rt.board.can_submit(SLOT):
        op.report({"WARNING"}, "A texture job is already running")
        return {"CANCELLED"}
    selected = [o for o in context.selected_objects] or (
        [context.active_object] if context.active_object else [])
    # full names: a library's object or mesh may share its name with a local one
    by_name = {o.name_full: o for o in selected}
    targets_names, shared, skipped = pjobs.split_selection(
        [(o.name_full, o.type, o.data.name_full if o.data else "") for o in selected])
    if skipped:
        op.report({"WARNING"}, f"Skipped (not meshes): {', '.join(skipped)}")
    locked = [apply.can_hold_texture(by_name[n]) for n in targets_names]
    linked = []
    for name, problem in zip(targets_names, locked):
        if problem:                         # linked from a library; its twins share the mesh
            twins = shared.pop(name, [])
            linked += [name] + twins
            op.report({"WARNING"}, f"Skipped: {problem}"
                      + (f" (and its linked duplicates {', '.join(twins)})" if twins else ""))
    targets_names = [n for n, problem in zip(targets_names, locked) if not problem]
    if not targets_names:
        op.report({"ERROR"}, "Nothing to texture: the selected meshes are linked from a library "
                  "(make them local first)" if linked else
                  "Select one or more mesh objects to texture")
        return {"CANCELLED"}
    limits, caps, known = _limits_caps(rt)
    if known:
        try:
            pjobs.mode_for(caps, p.use_depth, True)
            if mode == "ALL" and _view_count(scene) > 1:
                pjobs.mode_for(caps, p.use_depth, False)
        except rq.RequestError as exc:
            op.report({"ERROR"}, explain(exc.code, exc.detail).text)
            return {"CANCELLED"}
    size = int(p.texture_size)
    editing = {n for n, o in by_name.items() if o.mode == "EDIT"}
    if context.mode != "OBJECT":                 # edits reach the mesh in Object Mode
        bpy.ops.object.mode_set(mode="OBJECT")
    depsgraph = context.evaluated_depsgraph_get()
    targets, created_uv, empty = [], [], []
    try:
        for name in targets_names:
            obj = bpy.data.objects[name]
            if len(obj.data.polygons) == 0:
                empty.append(name)
                continue
            faces = _selected_faces(obj) if name in editing else None
            if len(obj.data.uv_layers) == 0:
                uv, mesh = smart_uv(context, obj)
                created_uv.append(name)
                targets.append(Target(obj, mesh, None, uv, size, faces=faces))
            else:
                uv_name = obj.data.uv_layers.active.name
                mesh = mesh_triangles(obj.evaluated_get(depsgraph), uv_name)
                prev, cov = _previous_texture(obj, size)
                targets.append(Target(obj, mesh, uv_name, None, size, prev, cov, faces))
    except Exception as exc:
        log.exception("Z-Image: reading the meshes")
        op.report({"ERROR"}, f"Could not read the meshes: {exc}")
        return {"CANCELLED"}
    empty += [t.object for t in targets if len(t.mesh) == 0]
    targets = [t for t in targets if len(t.mesh) > 0]
    if empty:
        op.report({"WARNING"}, f"Skipped (no faces): {', '.join(empty)}")
    if not targets:
        op.report({"ERROR"}, "The selected meshes have no faces to texture")
        return {"CANCELLED"}
    image_size = int(p.image_size)
    meshes = [t.mesh for t in targets]
    cameras = []
    if mode == "VIEW":
        view3d = capture.find_view3d(context)
        if view3d is not None:
            region, rv3d = view3d[2], view3d[3].region_3d
            w, h = rq.size_for_aspect(region.width / max(1, region.height),
                                      image_size * image_size, limits)
            views = [viewport_view(rv3d, w, h)]
            source = "VIEW"
        elif scene.camera is not None:
            views = [camera_view(scene.camera, depsgraph, image_size, image_size)]
            cameras, source = [scene.camera], "CAMERA"
        else:
            op.report({"ERROR"}, "No 3D view and no scene camera to project from")
            return {"CANCELLED"}
        words = [""]
    elif p.views_source == "COLLECTION":
        coll = p.camera_collection
        cameras = sorted((o for o in (coll.all_objects if coll else []) if o.type == "CAMERA"),
                         key=lambda o: o.name)
        if not cameras:
            op.report({"ERROR"}, "The chosen collection has no cameras")
            return {"CANCELLED"}
        cameras = cameras[:pjobs.MAX_VIEWS]
        views = [camera_view(c, depsgraph, image_size, image_size) for c in cameras]
        center, _r = framing(meshes)
        words = [pjobs.direction_words(*(v.eye - center)) for v in views]
        source = "CAMERA"
    else:
        views = orbit_views(meshes, image_size, p.views_around, p.view_above)
        words = pjobs.view_words(p.views_around, p.view_above)
        source = "ORBIT"
    seed = rq.resolve_seed(rq.Settings(prompt=s.prompt, seed_random=s.seed_random, seed=s.seed))
    if s.seed_random:
        s.seed = seed
    first = views[0]
    settings = pjobs.ProjectionSettings(
        prompt=s.prompt, width=first.width, height=first.height, steps=s.steps, seed=seed,
        strength=s.strength, control_scale=s.control_scale, use_depth=p.use_depth,
        view_words=p.view_words)
    first_init = None
    if not known or not (p.use_depth and rq.can_depth(caps)):    # unknown engine: have both
        try:
            first_init = _shaded_capture(context, scene, first, source,
                                         cameras[0] if cameras else None)
        except Exception as exc:
            log.exception("Z-Image capture")
            op.report({"ERROR"}, f"{explain('capture_failed').message} ({exc})")
            return {"CANCELLED"}
    try:
        from .operators import ensure_engine
        ensure_engine(rt)
    except Exception as exc:
        op.report({"ERROR"}, f"Could not start the engine: {exc}")
        return {"CANCELLED"}
    summary = {"created_uv": created_uv, "shared": shared, "skipped": skipped, "linked": linked}
    _RUN = Run(scene, targets, views, words, settings, p.sharpness, first_init, summary)
    start_timer()
    op.report({"INFO"}, f"Texturing {', '.join(t.object for t in targets)} from {len(views)} "
              f"view{'s' if len(views) != 1 else ''}")
    return {"FINISHED"}


def _shaded_capture(context, scene, view: pj.View, source: str, camera) -> bytes:
    if source == "VIEW":
        return capture.capture_color(context, scene, "VIEW", view.width, view.height)
    snap = capture.Snapshot()
    tmp = None
    try:
        if camera is None:
            tmp = temp_camera(scene, view)
            camera = tmp
        snap.set(scene, "camera", camera)
        return capture.capture_color(context, scene, "CAMERA", view.width, view.height)
    finally:
        snap.restore()
        if tmp is not None:
            data = tmp.data
            bpy.data.objects.remove(tmp)
            bpy.data.cameras.remove(data)


def _limits_caps(rt):
    welcome = rt.board.welcome
    if welcome:
        return rq.EngineLimits.from_welcome(welcome), rq.capabilities(welcome), True
    return rq.EngineLimits(), {"img2img", "inpaint", "control.depth"}, False


def _view_count(scene) -> int:
    p = scene.zimage_projection
    if p.views_source == "COLLECTION":
        coll = p.camera_collection
        return sum(1 for o in (coll.all_objects if coll else []) if o.type == "CAMERA")
    return p.views_around + (1 if p.view_above else 0)


# ---- timer and pump hook -------------------------------------------------------------------

def stop(why: str) -> None:
    """Another file is opening (or the add-on goes away): the run ends in whatever phase it
    is, and nothing of it is applied (its objects' names mean nothing in the next file)."""
    run = _RUN
    if run is not None:
        run.cancel(f"Cancelled: {why}")
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)


def tick():
    """Timer: moves the run along. Never raises (that would unregister it)."""
    run = _RUN
    if run is None:
        return None
    try:
        run.step()
    except Exception as exc:
        log.exception("Z-Image projection step")
        run._end(JobState.FAILED, f"Projection failed: {exc}")
    pump.redraw()
    return 0.05 if _RUN is not None else None


def start_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.05, persistent=True)


def handle_effect(eff) -> bool:
    """The pump's hook: True when the effect belonged to a projection run."""
    if not eff.job.context.get("projection"):
        return False
    run = _RUN
    if eff.kind == "result":
        if run is not None:
            run.on_result(eff)
        elif eff.job.active:
            runtime.get().board.complete(eff.job)
    elif eff.kind == "preview":
        apply.update_preview(eff.job.preview, runtime.user_dir())
    elif eff.kind == "failed" and run is not None:
        run.step()
    return True


def shutdown() -> None:
    """Unregistering: a run in flight is cancelled (nothing applied), the timer stops."""
    global _RUN
    if _RUN is not None:
        _RUN.cancel()
    _RUN = None
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
