"""Blender's side of texturing from views: evaluated meshes as world-space triangles (with
corner normals and UVs), Smart UV Project on a temporary copy, and views from cameras, the 3D
view or an orbit around the selection. Main thread only; the numpy work is core.projection."""

from __future__ import annotations

import math

import bpy
import numpy as np

from ..core import projection as pj

UV_NAME = "Z-Image UV"
FOV = math.radians(40.0)         # the generated orbit's field of view


# ---- reading meshes ------------------------------------------------------------------------

def _array(collection, attr: str, width: int, dtype=np.float32) -> np.ndarray:
    out = np.empty(len(collection) * width, dtype)
    collection.foreach_get(attr, out)
    return out.reshape(-1, width) if width > 1 else out


def mesh_triangles(obj_eval, uv_name: str | None) -> pj.Mesh:
    """World-space triangles of an evaluated object, with corner normals and UVs."""
    me = obj_eval.to_mesh()
    try:
        me.calc_loop_triangles()
        tris = _array(me.loop_triangles, "loops", 3, np.int32)
        loop_vert = _array(me.loops, "vertex_index", 1, np.int32)
        co = _array(me.vertices, "co", 3)
        normals = _array(me.corner_normals, "vector", 3)
        layer = me.uv_layers.get(uv_name) if uv_name else me.uv_layers.active
        if layer is None:
            raise ValueError(f"{obj_eval.name} has no UV map {uv_name or ''}".strip())
        uv = _array(layer.uv, "vector", 2)
    finally:
        obj_eval.to_mesh_clear()
    m = np.array(obj_eval.matrix_world, np.float64)
    pos = co.astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    nm = np.linalg.inv(m[:3, :3]).T
    nrm = normals.astype(np.float64) @ nm.T
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    return pj.Mesh(pos[loop_vert[tris]], nrm[tris], uv[tris])


def smart_uv(context, obj) -> tuple[np.ndarray, pj.Mesh]:
    """Smart UV Project on a temporary copy of the object (the user's mesh is not touched):
    returns the new per-loop UVs (written to the mesh at apply) and the evaluated triangles
    with them."""
    scene = context.scene
    data = obj.data.copy()
    tmp = obj.copy()
    tmp.data = data
    scene.collection.objects.link(tmp)
    view_layer = context.view_layer
    old_active = view_layer.objects.active
    old_selected = [o for o in view_layer.objects if o.select_get()]
    old_mode = obj.mode if obj.mode else "OBJECT"
    try:
        if old_mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        for o in old_selected:
            o.select_set(False)
        tmp.select_set(True)
        view_layer.objects.active = tmp
        while len(data.uv_layers):
            data.uv_layers.remove(data.uv_layers[0])
        data.uv_layers.new(name=UV_NAME)
        with context.temp_override(active_object=tmp, object=tmp, selected_objects=[tmp],
                                   selected_editable_objects=[tmp]):
            bpy.ops.object.mode_set(mode="EDIT")
            bpy.ops.mesh.reveal()
            bpy.ops.mesh.select_all(action="SELECT")
            bpy.ops.uv.smart_project(island_margin=0.01)
            bpy.ops.object.mode_set(mode="OBJECT")
        uv = _array(data.uv_layers[UV_NAME].uv, "vector", 2)
        depsgraph = context.evaluated_depsgraph_get()
        mesh = mesh_triangles(tmp.evaluated_get(depsgraph), UV_NAME)
        return uv, mesh
    finally:
        bpy.data.objects.remove(tmp)
        bpy.data.meshes.remove(data)
        for o in old_selected:
            try:
                o.select_set(True)
            except ReferenceError:
                pass
        view_layer.objects.active = old_active
        if old_mode != "OBJECT" and old_active is not None:
            try:
                bpy.ops.object.mode_set(mode=old_mode)
            except RuntimeError:
                pass


# ---- views ---------------------------------------------------------------------------------

def camera_view(obj, depsgraph, width: int, height: int) -> pj.View:
    proj = obj.calc_matrix_camera(depsgraph, x=width, y=height, scale_x=1.0, scale_y=1.0)
    m = np.array(obj.matrix_world.normalized(), np.float64)
    return pj.View.from_camera(m, np.array(proj), width, height,
                               ortho=obj.data.type == "ORTHO")


def viewport_view(rv3d, width: int, height: int) -> pj.View:
    m = np.array(rv3d.view_matrix.inverted(), np.float64)
    return pj.View(np.array(rv3d.perspective_matrix, np.float64), width, height, m[:3, 3],
                   -m[:3, 2], ortho=not rv3d.is_perspective)


def framing(meshes: list[pj.Mesh]) -> tuple[np.ndarray, float]:
    pts = np.concatenate([m.positions.reshape(-1, 3) for m in meshes])
    lo, hi = pts.min(0), pts.max(0)
    center = (lo + hi) / 2
    return center, float(np.linalg.norm(pts - center, axis=1).max())


def orbit_views(meshes, size: int, around: int, above: bool) -> list[pj.View]:
    center, radius = framing(meshes)
    proj = pj.perspective(FOV, size, size, near=radius * 0.01, far=radius * 100)
    return [pj.View.from_camera(p, proj, size, size)
            for p in pj.orbit_poses(center, max(radius, 1e-3), FOV, around, above)]


def temp_camera(scene, view: pj.View):
    """A camera object matching a generated view (for the shaded capture)."""
    from mathutils import Matrix
    data = bpy.data.cameras.new("Z-Image view")
    data.sensor_fit = "HORIZONTAL"
    data.angle = FOV
    obj = bpy.data.objects.new("Z-Image view", data)
    look = pj.look_at(view.eye, view.eye + view.forward)
    obj.matrix_world = Matrix(look.tolist())
    scene.collection.objects.link(obj)
    return obj
