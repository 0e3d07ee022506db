"""Capture the current view or the camera: colour (PNG) and depth (PNG, normalised to the
visible range). Every render setting that is changed is restored afterwards.

Colour: with a 3D viewport at hand (source "VIEW"), an OpenGL viewport render with overlays and
gizmos off; "RENDER": the scene's own render engine (EEVEE, Cycles) through the scene camera,
its Render Result saved as PNG; otherwise (source "CAMERA", or Blender without a window) a
Workbench render through the scene camera. Depth: for "RENDER" the render's own Depth pass;
otherwise rays cast from the same viewpoint (on a grid of at most DEPTH_GRID pixels a side,
then scaled), so it works without a GPU context too.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import bpy
from mathutils import Vector

from ..core import pixels

DEPTH_GRID = 192


class Snapshot:
    """Remembers attributes' first values and puts them back in the order first saved.

    Some settings depend on others: a new file format resets the colour depth, a new view
    transform resets the look. So dependants are saved (with save()) before anything changes,
    parents first, and restored parents first."""

    def __init__(self):
        self._saved: dict = {}

    def save(self, obj, *attrs: str) -> None:
        for attr in attrs:
            if hasattr(obj, attr):
                self._saved.setdefault((obj.as_pointer(), attr), (obj, attr, getattr(obj, attr)))

    def set(self, obj, attr: str, value) -> None:
        self.save(obj, attr)
        setattr(obj, attr, value)

    def restore(self) -> None:
        for obj, attr, value in self._saved.values():
            try:
                if getattr(obj, attr) != value:
                    setattr(obj, attr, value)
            except Exception:
                pass
        self._saved.clear()


def find_view3d(context):
    """(window, area, region, space) of a 3D viewport, preferring the context's."""
    if bpy.app.background:
        return None
    candidates = []
    if context.area is not None and context.area.type == "VIEW_3D":
        candidates.append((context.window, context.area))
    wm = context.window_manager
    for window in (wm.windows if wm else []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                candidates.append((window, area))
    for window, area in candidates:
        region = next((r for r in area.regions if r.type == "WINDOW"), None)
        if region is not None:
            return window, area, region, area.spaces.active
    return None


def _render_settings(snap: Snapshot, scene, width: int, height: int, path: str) -> None:
    r = scene.render
    # parents before dependants (see Snapshot), all before anything changes
    snap.save(r.image_settings, "media_type", "file_format", "color_mode", "color_depth")
    snap.save(scene.view_settings, "view_transform", "look", "exposure", "gamma")
    snap.set(r, "resolution_x", width)
    snap.set(r, "resolution_y", height)
    snap.set(r, "resolution_percentage", 100)
    snap.set(r, "pixel_aspect_x", 1.0)
    snap.set(r, "pixel_aspect_y", 1.0)
    snap.set(r, "use_border", False)
    snap.set(r, "film_transparent", False)
    snap.set(r, "use_compositing", False)
    snap.set(r, "use_sequencer", False)
    snap.set(r, "use_stamp", False)
    snap.set(r, "filepath", path)
    snap.set(r, "use_file_extension", False)
    snap.set(r.image_settings, "file_format", "PNG")
    snap.set(r.image_settings, "color_mode", "RGB")
    snap.set(r.image_settings, "color_depth", "8")
    snap.set(scene.view_settings, "view_transform", "Standard")
    snap.set(scene.view_settings, "look", "None")
    snap.set(scene.view_settings, "exposure", 0.0)
    snap.set(scene.view_settings, "gamma", 1.0)


def capture_color(context, scene, source: str, width: int, height: int, *,
                  quick: bool = False) -> bytes:
    """PNG bytes of the view at width x height. `quick` (live frames): the camera's Workbench
    render without its 8-sample anti-aliasing (FXAA instead) and an uncompressed PNG."""
    folder = tempfile.mkdtemp(prefix="zimage_capture_")
    path = os.path.join(folder, "capture.png")
    snap = Snapshot()
    try:
        _render_settings(snap, scene, width, height, path)
        view = find_view3d(context) if source == "VIEW" else None
        if view is not None:
            window, area, region, space = view
            snap.set(space.overlay, "show_overlays", False)
            snap.set(space, "show_gizmo", False)
            with context.temp_override(window=window, area=area, region=region,
                                       scene=scene):
                bpy.ops.render.opengl(write_still=False, view_context=True)
            bpy.data.images["Render Result"].save_render(path, scene=scene)
        else:
            if scene.camera is None:
                raise RuntimeError("the scene has no camera to capture through")
            if source != "RENDER":      # a quick Workbench render; RENDER: the scene's own
                snap.set(scene.render, "engine", "BLENDER_WORKBENCH")
                shading = scene.display.shading
                snap.set(shading, "light", "STUDIO")
                snap.set(shading, "color_type", "MATERIAL")
                if quick:
                    snap.set(scene.display, "render_aa", "FXAA")
                    snap.set(scene.render.image_settings, "compression", 0)
            with context.temp_override(scene=scene):
                bpy.ops.render.render(write_still=True, scene=scene.name)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        snap.restore()
        shutil.rmtree(folder, ignore_errors=True)


def capture_render_depth(context, scene, width: int, height: int) -> bytes:
    """Depth from the scene's own render engine: its Depth pass, written by a render as an
    uncompressed multilayer OpenEXR (Blender's Python cannot read a Render Result's passes),
    normalised like capture_depth (nearest white, background black)."""
    from ..core.exr import read_channel
    if scene.camera is None:
        raise RuntimeError("the scene has no camera to capture through")
    folder = tempfile.mkdtemp(prefix="zimage_capture_")
    path = os.path.join(folder, "depth.exr")
    view_layer = context.view_layer
    snap = Snapshot()
    try:
        _render_settings(snap, scene, width, height, path)
        fmt = scene.render.image_settings
        snap.save(fmt, "exr_codec")
        if hasattr(fmt, "media_type"):          # Blender 5.0+: the media type picks the format
            snap.set(fmt, "media_type", "MULTI_LAYER_IMAGE")
        snap.set(fmt, "file_format", "OPEN_EXR_MULTILAYER")
        snap.set(fmt, "color_depth", "32")
        snap.set(fmt, "exr_codec", "NONE")
        snap.set(view_layer, "use_pass_z", True)
        with context.temp_override(scene=scene):
            bpy.ops.render.render(write_still=True, scene=scene.name)
        with open(path, "rb") as fh:
            data = fh.read()
    finally:
        snap.restore()
        shutil.rmtree(folder, ignore_errors=True)
    try:
        w, h, z = read_channel(data, f"{view_layer.name}.Depth.Z")
    except ValueError:
        w, h, z = read_channel(data, ".Depth.Z")
    far = scene.camera.data.clip_end
    grey = pixels.normalise_depth([v if 0.0 <= v < far else None for v in z])
    if (w, h) != (width, height):
        grey = pixels.resize_nearest(grey, w, h, 1, width, height)
    rgb = bytearray(width * height * 3)
    rgb[0::3] = rgb[1::3] = rgb[2::3] = grey
    return pixels.encode_png(bytes(rgb), width, height, 3)


def _camera_rays(scene, camera, gw: int, gh: int):
    """(origin, direction, forward, per-pixel origins?) for a gw x gh grid, rows top-down."""
    cam = camera.data
    frame = cam.view_frame(scene=scene)
    xs = [v.x for v in frame]
    ys = [v.y for v in frame]
    z = frame[0].z
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    mw = camera.matrix_world
    rot = mw.to_3x3()
    forward = (rot @ Vector((0.0, 0.0, -1.0))).normalized()
    origin = mw.translation.copy()
    ortho = cam.type == "ORTHO"
    for j in range(gh):
        v = y1 - (j + 0.5) / gh * (y1 - y0)
        for i in range(gw):
            u = x0 + (i + 0.5) / gw * (x1 - x0)
            if ortho:
                o = mw @ Vector((u, v, 0.0))
                yield o, forward, forward
            else:
                p = mw @ Vector((u, v, z))
                yield origin, (p - origin).normalized(), forward


def _view_rays(region, rv3d, gw: int, gh: int):
    from bpy_extras import view3d_utils
    forward = (rv3d.view_rotation @ Vector((0.0, 0.0, -1.0))).normalized()
    for j in range(gh):
        y = region.height * (1.0 - (j + 0.5) / gh)
        for i in range(gw):
            x = region.width * (i + 0.5) / gw
            o = view3d_utils.region_2d_to_origin_3d(region, rv3d, (x, y))
            d = view3d_utils.region_2d_to_vector_3d(region, rv3d, (x, y))
            yield o, d, forward


def capture_depth(context, scene, source: str, width: int, height: int) -> bytes:
    """PNG (RGB, grey) of view-space depth, nearest visible surface white, background black."""
    scale = min(1.0, DEPTH_GRID / max(width, height))
    gw, gh = max(1, round(width * scale)), max(1, round(height * scale))
    depsgraph = context.evaluated_depsgraph_get()
    view = find_view3d(context) if source == "VIEW" else None
    snap = Snapshot()
    try:
        if view is not None:
            _w, _a, region, space = view
            rays = _view_rays(region, space.region_3d, gw, gh)
            clip = space.clip_end
        else:
            camera = scene.camera
            if camera is None:
                raise RuntimeError("the scene has no camera to capture through")
            snap.set(scene.render, "resolution_x", width)     # view_frame uses the aspect
            snap.set(scene.render, "resolution_y", height)
            snap.set(scene.render, "pixel_aspect_x", 1.0)
            snap.set(scene.render, "pixel_aspect_y", 1.0)
            rays = _camera_rays(scene, camera, gw, gh)
            clip = camera.data.clip_end
        depths = []
        for origin, direction, forward in rays:
            hit, loc, *_ = scene.ray_cast(depsgraph, origin, direction, distance=clip)
            depths.append((loc - origin).dot(forward) if hit else None)
    finally:
        snap.restore()
    grey = pixels.normalise_depth(depths)
    grey = pixels.resize_nearest(grey, gw, gh, 1, width, height)
    rgb = bytearray(width * height * 3)
    rgb[0::3] = rgb[1::3] = rgb[2::3] = grey
    return pixels.encode_png(bytes(rgb), width, height, 3)


def capture_matrix(context, scene, source: str):
    """The viewpoint's world matrix (for placing a reference image), as nested tuples."""
    view = find_view3d(context) if source == "VIEW" else None
    if view is not None:
        m = view[3].region_3d.view_matrix.inverted()
    elif scene.camera is not None:
        m = scene.camera.matrix_world
    else:
        return None
    return tuple(tuple(row) for row in m)
