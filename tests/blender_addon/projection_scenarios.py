"""Texturing from views, in a fresh headless Blender with the BUILT add-on (run by
test_blender_projection.py):

    python projection_scenarios.py --zip Z --out results.json --scenarios install,...
        --replay1 ADDR --dir1 DIR --replay6 ADDR --dir6 DIR --replay-b ADDR --dir-b DIR
        --rules ADDR

The engines are replay_server.py stand-ins: the n-th job answers DIR/view_<n>.png, which the
scenario rendered beforehand (Workbench, flat light, texture colour, no anti-aliasing) from the
object carrying the known texture T. So "the engine" returns exactly what the textured object
looks like from the requested view, and baking it back must give T again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import blender_scenarios as bs  # noqa: E402  (sets up the throwaway profile, imports bpy)
from blender_scenarios import RESULTS, addon, bpy, connect, install, scenario

import numpy as np  # noqa: E402  (Blender's own numpy)

ARGS = None
FOV = math.radians(40.0)
SIX_SIZE = 1024          # the panel's default view image size


# ---- scene helpers -----------------------------------------------------------------------

def clear_scene():
    for o in list(bpy.data.objects):
        bpy.data.objects.remove(o)
    for c in list(bpy.data.collections):
        bpy.data.collections.remove(c)
    for m in list(bpy.data.meshes):
        bpy.data.meshes.remove(m)


def checker(name="T", size=256, cells=8) -> bpy.types.Image:
    """A colour checker: a distinct colour per cell."""
    rng = np.random.default_rng(5)
    cols = rng.uniform(0.08, 0.92, (cells, cells, 3))
    k = np.arange(size) * cells // size
    px = np.ones((size, size, 4), np.float32)
    px[..., :3] = cols[k[:, None], k[None, :]]
    img = bpy.data.images.new(name, size, size, alpha=False)
    img.pixels.foreach_set(px.ravel())
    img.pack()
    return img


def t_material(image) -> bpy.types.Material:
    mat = bpy.data.materials.new("T material")
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Closest"
    mat.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    nodes.active = tex
    return mat


def add(kind: str, location, name: str):
    if kind == "sphere":
        bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0, location=location)
    else:
        bpy.ops.mesh.primitive_monkey_add(size=2.0, location=location)
    obj = bpy.context.active_object
    obj.name = name
    bpy.ops.object.shade_smooth()
    return obj


def camera(name: str, eye, target=(0.0, 0.0, 0.0), collection=None):
    from mathutils import Matrix
    pj = addon("core.projection")
    data = bpy.data.cameras.new(name)
    data.sensor_fit = "HORIZONTAL"
    data.angle = FOV
    obj = bpy.data.objects.new(name, data)
    (collection or bpy.context.scene.collection).objects.link(obj)
    obj.matrix_world = Matrix(pj.look_at(eye, target).tolist())
    return obj


def render(cam, size, path: str) -> np.ndarray:
    """(H,W,4) uint8 rows top-down: flat texture colour, alpha = the object's pixels.
    size: a side, or (width, height)."""
    scene = bpy.context.scene
    scene.camera = cam
    r = scene.render
    r.engine = "BLENDER_WORKBENCH"
    r.resolution_x, r.resolution_y = (size, size) if isinstance(size, int) else size
    r.resolution_percentage = 100
    r.film_transparent = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.image_settings.color_depth = "8"
    r.filepath = path
    r.use_file_extension = False
    scene.display.shading.light = "FLAT"
    scene.display.shading.color_type = "TEXTURE"
    scene.display.render_aa = "OFF"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    bpy.ops.render.render(write_still=True)
    return read_png(path)


def read_png(path: str) -> np.ndarray:
    w, h, c, rows = addon("core.pixels").decode_png(open(path, "rb").read())
    return np.frombuffer(rows, np.uint8).reshape(h, w, c)


def write_rgb(arr: np.ndarray, path: str) -> None:
    h, w = arr.shape[:2]
    png = addon("core.pixels").encode_png(np.ascontiguousarray(arr[..., :3]).tobytes(), w, h, 3)
    with open(path, "wb") as fh:
        fh.write(png)


def psnr(a, b) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def select(objs, active=None):
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    for o in objs:
        o.select_set(True)
    bpy.context.view_layer.objects.active = active or objs[0]


def run_until_done(timeout: float = 120.0) -> dict:
    project, pump = addon("blender.project"), addon("blender.pump")
    end = time.monotonic() + timeout
    while time.monotonic() < end and project.current() is not None:
        pump.tick()
        project.tick()
        time.sleep(0.01)
    assert project.current() is None, "the projection run did not finish"
    return dict(project.last())


def settings(**kw):
    s = bs.settings(prompt="colour checker", seed_random=False, seed=3, steps=2, **kw)
    p = bpy.context.scene.zimage_projection
    p.texture_size = "1024"
    p.image_size = "512"
    return p


def strip_uvs(obj) -> np.ndarray:
    """Remove every UV map (so the run must make one); returns the first map's UVs."""
    me = obj.data
    uv = np.empty(len(me.loops) * 2, np.float32)
    me.uv_layers[0].uv.foreach_get("vector", uv)
    while len(me.uv_layers):
        me.uv_layers.remove(me.uv_layers[0])
    return uv.reshape(-1, 2)


def silhouette_band(alpha: np.ndarray, px: int) -> np.ndarray:
    """Pixels within px of the object's outline."""
    inside = alpha > 0
    band = np.zeros_like(inside)
    for dy in range(-px, px + 1):
        for dx in range(-px, px + 1):
            band |= np.roll(np.roll(inside, dy, 0), dx, 1) != inside
    return band


def compare_views(ref: np.ndarray, got: np.ndarray) -> dict:
    vis = ref[..., 3] == 255
    both = vis & (got[..., 3] == 255)
    inner = both & ~silhouette_band(ref[..., 3], 1)
    return {"visible": int(vis.sum()), "both": int(both.sum()),
            "inner_fraction": float(inner.sum() / max(1, vis.sum())),
            "psnr_all": psnr(ref[both][:, :3], got[both][:, :3]),
            "psnr_inner": psnr(ref[inner][:, :3], got[inner][:, :3])}


# ---- scenarios -----------------------------------------------------------------------------

@scenario
def project_one_view(out):
    """A UV sphere and Suzanne carry T; one view from the camera; fresh UVs; compare."""
    clear_scene()
    connect(ARGS.replay1)
    T = checker()
    sphere = add("sphere", (-1.3, 0, 0), "Sphere")
    suz = add("monkey", (1.3, 0, 0), "Suzanne")
    for o in (sphere, suz):
        o.data.materials.append(t_material(T))
    cam = camera("View", (0.5, -6.5, 1.8))
    ref = render(cam, 512, os.path.join(ARGS.dir1, "reference.png"))
    write_rgb(ref, os.path.join(ARGS.dir1, "view_0.png"))
    for o in (sphere, suz):
        strip_uvs(o)
    select([sphere, suz])
    settings()
    t0 = time.perf_counter()
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    out["run"] = run_until_done()
    out["run_seconds"] = round(time.perf_counter() - t0, 2)
    out["uv_maps"] = {o.name: [u.name for u in o.data.uv_layers] for o in (sphere, suz)}
    out["materials"] = {o.name: [s.material.name for s in o.material_slots]
                        for o in (sphere, suz)}
    img = bpy.data.images.get(out["run"]["images"][0]) if out["run"]["images"] else None
    out["image"] = None if img is None else {
        "size": list(img.size), "packed": img.packed_file is not None,
        "coverage": img.get("zimage_coverage"), "seed": img.get("zimage_seed")}
    got = render(cam, 512, os.path.join(ARGS.dir1, "after.png"))
    out["compare"] = compare_views(ref, got)
    req = json.load(open(os.path.join(ARGS.dir1, "req_0.json")))
    out["request"] = req
    depth = read_png(os.path.join(ARGS.dir1, "req_0_control_image.png"))
    grey = depth[..., 0]
    near = grey[ref[..., 3] == 255]
    out["depth"] = {"max": int(near.max()), "min_visible": int(near.min()),
                    "background_max": int(grey[ref[..., 3] == 0].max()),
                    "suzanne_nose_brighter_than_sphere_back": None}
    out["history"] = [(h.prompt, h.image_name, h.kind)
                      for h in bpy.context.scene.zimage.history]
    # History > Re-apply puts the baked texture on the active object again (new material)
    hist = bpy.context.scene.zimage.history
    index = next(i for i, h in enumerate(hist) if h.image_name.startswith("Sphere"))
    select([sphere])
    slots = len(sphere.material_slots)
    out["reapply"] = sorted(bpy.ops.zimage.history_apply(index=index))
    tex = next(n for n in sphere.active_material.node_tree.nodes if n.type == "TEX_IMAGE")
    out["reapply_image"] = [tex.image.name, hist[index].image_name,
                            len(sphere.material_slots) - slots]


def uv_texel_truth(obj, uv_orig: np.ndarray, size: int):
    """Per texel of the object's new UV map: is it on the surface, and which colour of T
    belongs there (T looked up through the original UVs at the same surface point)."""
    pj = addon("core.projection")
    me = obj.data
    me.calc_loop_triangles()
    tris = np.empty(len(me.loop_triangles) * 3, np.int32)
    me.loop_triangles.foreach_get("loops", tris)
    tris = tris.reshape(-1, 3)
    new_uv = np.empty(len(me.loops) * 2, np.float32)
    me.uv_layers.active.uv.foreach_get("vector", new_uv)
    new_uv = new_uv.reshape(-1, 2)
    pos = np.concatenate([uv_orig, np.zeros((len(uv_orig), 1))], 1)
    mesh = pj.Mesh(pos[tris], np.tile([0.0, 0.0, 1.0], (len(tris), 3, 1)), new_uv[tris])
    return pj.texel_map(mesh, size)


def image_rgb(image) -> np.ndarray:
    w, h = image.size
    px = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(px)
    return px.reshape(h, w, 4)                   # rows bottom-up, like the texture arrays


EXTERIOR_SAMPLE = 40000
DEEP = 0.05               # world units: ~12 pixels of a 1024-pixel view from 6 units away


def exterior(obj, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N,) bool: does some ray leaving the point on its front side reach open space without
    hitting the object? (a ray that leaves the convex hull never comes back, so these are
    exactly the points some camera outside can see). 1024 directions, nearest the normal first."""
    from mathutils import Vector
    from mathutils.bvhtree import BVHTree
    bvh = BVHTree.FromObject(obj, bpy.context.evaluated_depsgraph_get())
    n = 1024
    i = np.arange(n) + 0.5
    polar, turn = np.arccos(1 - 2 * i / n), math.pi * (1 + 5 ** 0.5) * i
    dirs = np.stack([np.cos(turn) * np.sin(polar), np.sin(turn) * np.sin(polar),
                     np.cos(polar)], 1)
    inv = np.linalg.inv(np.array(obj.matrix_world, np.float64))
    out = np.zeros(len(points), bool)
    for k, (p, nrm) in enumerate(zip(points, normals)):
        cos = dirs @ nrm
        order = np.argsort(-cos)[:int((cos > 1e-3).sum())]
        origin = Vector((inv[:3, :3] @ (p + 1e-4 * nrm)) + inv[:3, 3])
        for d in dirs[order]:
            if bvh.ray_cast(origin, Vector(inv[:3, :3] @ d))[0] is None:
                out[k] = True
                break
    return out


@scenario
def project_six_views(out):
    """Suzanne carries T; six cameras around; fresh UVs; coverage and PSNR over texels; the
    requests of later views show the texture so far and the mask of what is missing."""
    clear_scene()
    connect(ARGS.replay6)
    T = checker()
    suz = add("monkey", (0, 0, 0), "Suzanne")
    suz.data.materials.append(t_material(T))
    coll = bpy.data.collections.new("Views")
    bpy.context.scene.collection.children.link(coll)
    eyes = [(0, -6, 0.6), (6, 0, 0.6), (0, 6, 0.6), (-6, 0, 0.6), (0, 0.01, 6), (0, 0.01, -6)]
    cams = [camera(f"V{k}", e, collection=coll) for k, e in enumerate(eyes)]
    refs = []
    for k, cam in enumerate(cams):
        ref = render(cam, SIX_SIZE, os.path.join(ARGS.dir6, f"reference_{k}.png"))
        write_rgb(ref, os.path.join(ARGS.dir6, f"view_{k}.png"))
        refs.append(ref)
    # the replay engine of the "views agree" check answers bakes from views 0; 0, 1; 0, 1, 2
    for n, k in enumerate([0, 0, 1, 0, 1, 2]):
        write_rgb(refs[k], os.path.join(ARGS.dir_b, f"view_{n}.png"))
    uv_orig = strip_uvs(suz)
    select([suz])
    p = settings()
    p.image_size = str(SIX_SIZE)
    p.views_source = "COLLECTION"
    p.camera_collection = coll
    assert bpy.ops.zimage.project_all() == {"FINISHED"}
    out["run"] = run_until_done()
    img = bpy.data.images[out["run"]["images"][0]]
    cov = bpy.data.images[img["zimage_coverage"]]
    truth = uv_texel_truth(suz, uv_orig, 1024)
    baked = image_rgb(img).reshape(-1, 4)[truth.index, :3]
    covered = image_rgb(cov).reshape(-1, 4)[truth.index, 0] > 0
    Tpx = image_rgb(T)
    ts = Tpx.shape[0]
    tu = np.clip((truth.position[:, 0] * ts).astype(int), 0, ts - 1)
    tv = np.clip((truth.position[:, 1] * ts).astype(int), 0, ts - 1)
    expect = Tpx[tv, tu, :3]
    out["coverage"] = float(covered.mean())
    # the surface a camera can see at all: texels with a line of sight to the outside, decided
    # by Blender's own ray casting (BVH), not by the projection code under test. Suzanne's
    # eyeballs sink into her head: the parts inside are surface texels no view can reach.
    pj = addon("core.projection")
    world = addon("blender.project_scene").mesh_triangles(
        suz.evaluated_get(bpy.context.evaluated_depsgraph_get()), "Z-Image UV")
    wtex = pj.texel_map(world, 1024)
    assert np.array_equal(wtex.index, truth.index)
    sample = np.random.default_rng(11).choice(len(wtex.index), EXTERIOR_SAMPLE, replace=False)
    outside = exterior(suz, wtex.position[sample], wtex.normal[sample])
    out["sampled_texels"] = EXTERIOR_SAMPLE
    out["exterior"] = float(outside.mean())
    out["coverage_of_exterior"] = float((covered[sample] & outside).sum() / max(1, outside.sum()))
    # occluded surfaces receive nothing: enclosed texels get colour only within the depth
    # test's tolerance of the visible surface (a few pixels where the eyeballs meet the head)
    from mathutils.kdtree import KDTree
    points = wtex.position[sample]
    tree = KDTree(int(outside.sum()))
    for j, q in enumerate(points[outside]):
        tree.insert(q.tolist(), j)
    tree.balance()
    inside = np.flatnonzero(~outside)
    depth_in = np.array([tree.find(points[j].tolist())[2] for j in inside])
    deep = inside[depth_in > DEEP]
    out["enclosed"] = len(inside)
    out["enclosed_covered"] = int(covered[sample][inside].sum())
    out["deep"] = len(deep)
    out["deep_covered"] = int(covered[sample][deep].sum())
    out["psnr_covered"] = psnr(baked[covered] * 255, expect[covered] * 255)
    out["views"] = [{"k": k, **compare_views(refs[k], render(
        cams[k], SIX_SIZE, os.path.join(ARGS.dir6, f"after_{k}.png")))} for k in range(6)]
    out["requests"] = [json.load(open(os.path.join(ARGS.dir6, f"req_{k}.json")))
                       for k in range(6)]
    out["blobs"] = [sorted(f[len(f"req_{k}_"):-4] for f in os.listdir(ARGS.dir6)
                           if f.startswith(f"req_{k}_") and f.endswith(".png"))
                    for k in range(6)]
    connect(ARGS.replay_b)
    out["agree"] = [views_agree(suz, cams, k) for k in (1, 2, 3)]


def views_agree(suz, cams, k: int) -> dict:
    """Request k of the six-view run must show the texture built from views 0..k-1, rendered
    from view k, and a mask white exactly where that texture is empty or poorly covered.
    Checked against Blender's own render (Workbench) of a bake from views 0..k-1 on a fresh
    copy of the object."""
    pj = addon("core.projection")
    copy = suz.copy()
    copy.data = suz.data.copy()
    bpy.context.scene.collection.objects.link(copy)
    while len(copy.data.uv_layers):
        copy.data.uv_layers.remove(copy.data.uv_layers[0])
    copy.data.materials.clear()
    for o in bpy.context.scene.objects:
        if o.type == "MESH":
            o.hide_render = o != copy
    coll = bpy.data.collections.new(f"First {k} views")
    bpy.context.scene.collection.children.link(coll)
    for cam in cams[:k]:
        coll.objects.link(cam)
    select([copy])
    p = bpy.context.scene.zimage_projection
    p.camera_collection = coll
    assert bpy.ops.zimage.project_all() == {"FINISHED"}
    run = run_until_done()
    out = {"k": k, "run": run["message"]}
    so_far = render(cams[k], SIX_SIZE, os.path.join(ARGS.dir_b, f"so_far_{k}.png"))
    sent = read_png(os.path.join(ARGS.dir6, f"req_{k}_init_image.png"))
    mask = read_png(os.path.join(ARGS.dir6, f"req_{k}_mask.png"))
    mask = mask[..., 0] if mask.ndim == 3 else mask
    obj = so_far[..., 3] == 255
    keep = obj & (mask < 128)
    out["psnr_init_vs_render"] = psnr(so_far[keep][:, :3], sent[keep][:, :3])
    out["covered_pixels"] = int(keep.sum())
    # the coverage image through the same view: white where still empty or poor
    img = bpy.data.images[run["images"][0]]
    cov = bpy.data.images[img["zimage_coverage"]]
    mat = copy.active_material
    tex = next(n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE")
    tex.image = cov
    tex.interpolation = "Closest"
    cov.colorspace_settings.name = "sRGB"       # Workbench shows sRGB values as they are
    cov_view = render(cams[k], SIX_SIZE, os.path.join(ARGS.dir_b, f"coverage_{k}.png"))
    expect = obj & (cov_view[..., 0] < round(pj.POOR_FACING * 255))
    diff = (mask >= 128) != expect
    band = silhouette_band(so_far[..., 3], 2)
    out["mask_white"] = int((mask >= 128).sum())
    out["mask_mismatch"] = int((diff & ~band).sum())
    out["mask_mismatch_fraction"] = float((diff & ~band).sum() / max(1, obj.sum()))
    out["mask_outside_object"] = int(((mask >= 128) & ~obj & ~band).sum())
    copy.hide_render = True
    return out


@scenario
def selection_rules(out):
    """No UV map -> one is made (reported); an existing map is untouched; linked duplicates
    get one texture (reported); non-mesh objects are skipped before anything is sent."""
    clear_scene()
    connect(ARGS.rules)
    project = addon("blender.project")
    cube = add("sphere", (0, 0, 0), "WithUV")
    uv_before = np.empty(len(cube.data.loops) * 2, np.float32)
    cube.data.uv_layers[0].uv.foreach_get("vector", uv_before)
    names_before = [u.name for u in cube.data.uv_layers]
    bare = add("monkey", (3, 0, 0), "Bare")
    strip_uvs(bare)
    twin = bare.copy()                   # linked duplicate: same mesh
    twin.name = "Bare twin"
    twin.location = (3, 3, 0)
    bpy.context.scene.collection.objects.link(twin)
    lamp = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))
    bpy.context.scene.collection.objects.link(lamp)
    cam = camera("Cam", (1.5, -9, 2), (1.5, 0, 0))
    bpy.context.scene.camera = cam
    settings()
    # only non-meshes selected: refused, nothing sent
    select([lamp])
    try:
        out["only_lamp"] = sorted(bpy.ops.zimage.project_view())
    except RuntimeError as exc:          # an operator that reports an error raises here
        out["only_lamp"] = ["CANCELLED"]
        out["only_lamp_error"] = str(exc)
    out["only_lamp_run"] = project.current() is not None
    # a mesh without faces alone: refused, nothing sent
    empty = bpy.data.objects.new("Empty mesh", bpy.data.meshes.new("Empty mesh"))
    bpy.context.scene.collection.objects.link(empty)
    select([empty])
    try:
        out["only_empty"] = sorted(bpy.ops.zimage.project_view())
    except RuntimeError as exc:
        out["only_empty"] = ["CANCELLED"]
        out["only_empty_error"] = str(exc)
    out["only_empty_run"] = project.current() is not None
    bpy.data.objects.remove(empty)
    # Edit Mode on one of them: the run switches to Object Mode first
    select([cube])
    bpy.ops.object.mode_set(mode="EDIT")
    select([cube, bare, twin, lamp])
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    out["mode_after"] = bpy.context.mode
    run = run_until_done()
    out["message"] = run["message"]
    out["phase"] = run["phase"]
    out["images"] = run["images"]
    out["requests"] = len(run["requests"])
    uv_after = np.empty(len(cube.data.loops) * 2, np.float32)
    cube.data.uv_layers[0].uv.foreach_get("vector", uv_after)
    out["existing_uv_untouched"] = bool(np.array_equal(uv_before, uv_after))
    out["uv_names"] = {"WithUV": [u.name for u in cube.data.uv_layers], "before": names_before,
                       "Bare": [u.name for u in bare.data.uv_layers]}
    out["twin_material"] = twin.active_material.name if twin.active_material else None
    out["bare_material"] = bare.active_material.name if bare.active_material else None


@scenario
def cancel_applies_nothing(out):
    clear_scene()
    connect(ARGS.rules)
    project, pump = addon("blender.project"), addon("blender.pump")
    suz = add("monkey", (0, 0, 0), "Suzanne")
    strip_uvs(suz)
    select([suz])
    p = settings()
    p.views_source = "ORBIT"
    p.views_around = 4
    p.view_above = True
    before = (sorted(i.name for i in bpy.data.images), sorted(m.name for m in bpy.data.materials),
              len(suz.data.uv_layers), len(bpy.context.scene.zimage.history))
    previews_before = [i.name for i in bpy.data.images if i.name.startswith("Z-Image View")]
    assert bpy.ops.zimage.project_all() == {"FINISHED"}
    run = project.current()
    out["views"] = run.count
    end = time.monotonic() + 60
    while time.monotonic() < end and run.index < 2 and project.current() is not None:
        pump.tick()
        project.tick()
        time.sleep(0.01)
    out["reached_view"] = run.index
    out["status"] = run.status_text()
    out["panel_running"] = draw_panel()
    out["progress"] = run.progress
    assert bpy.ops.zimage.project_cancel() == {"FINISHED"}
    for _ in range(20):
        pump.tick()
        project.tick()
        time.sleep(0.02)
    after = (sorted(i.name for i in bpy.data.images if not transient(i.name)),
             sorted(m.name for m in bpy.data.materials), len(suz.data.uv_layers),
             len(bpy.context.scene.zimage.history))
    before = (sorted(n for n in before[0] if not transient(n)),) + before[1:]
    out["previews_left"] = [i.name for i in bpy.data.images if i.name.startswith("Z-Image View")
                            and i.name not in previews_before]
    out["phase"] = project.last().get("phase")
    out["nothing_applied"] = before == after
    out["diff"] = [sorted(set(before[0]) ^ set(after[0])), sorted(set(before[1]) ^ set(after[1])),
                   before[2:], after[2:]]
    out["can_submit"] = rt().board.can_submit("texture")
    out["panel_idle"] = draw_panel()


def draw_panel() -> dict:
    """The "Texture from Views" sub-panel's draw() against the current state (no UI in
    background mode: the scenarios' FakeLayout checks every property and operator)."""
    log = []
    fake = type("P", (), {"layout": bs.FakeLayout(log)})()
    bpy.types.ZIMAGE_PT_view3d_projection.draw(fake, bpy.context)
    return {"operators": sorted({e[1] for e in log if e[0] == "operator"}),
            "props": sorted({e[1] for e in log if e[0] == "prop"}),
            "progress": [e[2].get("text") for e in log if e[0] == "progress"],
            "icons": sum(1 for e in log if e[0] == "template_icon")}


@scenario
def project_again_adds(out):
    """Projecting again onto an earlier projection keeps what the new view does not see."""
    connect(ARGS.rules)
    sphere = bpy.data.objects["Sphere"]          # from project_one_view: our UVs and texture
    first = sphere.active_material
    tex = next(n for n in first.node_tree.nodes if n.type == "TEX_IMAGE").image
    cov1 = bpy.data.images[tex["zimage_coverage"]]
    px1, c1 = image_rgb(tex), image_rgb(cov1)[..., 0]
    cam = camera("Behind", (-1.3, 6.5, 1.0), (-1.3, 0, 0))
    bpy.context.scene.camera = cam
    select([sphere])
    settings()
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    run = run_until_done()
    out["phase"] = run["phase"]
    img = bpy.data.images[run["images"][0]]
    px2, c2 = image_rgb(img), image_rgb(bpy.data.images[img["zimage_coverage"]])[..., 0]
    only_first = (c1 > 0) & (c2 <= c1)          # the second view saw nothing new there
    new = (c1 == 0) & (c2 > 0)
    out["kept_texels"] = int(only_first.sum())
    out["kept_equal"] = bool(np.abs(px2[only_first] - px1[only_first]).max() < 1.5 / 255)
    out["new_texels"] = int(new.sum())
    out["new_grey"] = float(np.abs(px2[new][:, :3] - 128 / 255).mean())   # stand-in: grey
    out["uv_maps"] = [u.name for u in sphere.data.uv_layers]


@scenario
def survives_save_and_reopen(out):
    """The baked texture, its coverage and the material come back with the file, and
    projecting again after reopening still adds to the texture."""
    import tempfile
    sphere = bpy.data.objects["Sphere"]          # textured twice by the scenarios above
    tex = next(n for n in sphere.active_material.node_tree.nodes if n.type == "TEX_IMAGE").image
    names = [tex.name, tex["zimage_coverage"]]
    before = [image_rgb(bpy.data.images[n]) for n in names]
    path = os.path.join(tempfile.mkdtemp(prefix="zimage_save_"), "textured.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    connect(ARGS.rules)
    out["found"] = [n in bpy.data.images for n in names]
    if not all(out["found"]):
        return
    after = [image_rgb(bpy.data.images[n]) for n in names]
    out["packed"] = [bpy.data.images[n].packed_file is not None for n in names]
    out["same_pixels"] = [bool(np.array_equal(a, b)) for a, b in zip(before, after)]
    sphere = bpy.data.objects["Sphere"]
    c1 = after[1][..., 0]
    bpy.context.scene.camera = camera("Below", (-1.3, 0.5, -6.5), (-1.3, 0, 0))
    select([sphere])
    settings()
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    out["phase"] = run_until_done()["phase"]
    tex = next(n for n in sphere.active_material.node_tree.nodes if n.type == "TEX_IMAGE").image
    px2 = image_rgb(tex)
    c2 = image_rgb(bpy.data.images[tex["zimage_coverage"]])[..., 0]
    kept = (c1 > 0) & (c2 <= c1)
    out["kept_texels"] = int(kept.sum())
    out["kept_equal"] = bool(np.abs(px2[kept] - after[0][kept]).max() < 1.5 / 255)


@scenario
def starts_before_the_welcome(out):
    """Texturing clicked while the add-on is not connected: the run connects, waits for the
    engine's welcome, then sends (with the engine's real capabilities)."""
    clear_scene()
    suz = add("monkey", (0, 0, 0), "Suzanne")
    cam = camera("Cam", (0, -6, 0.5))
    bpy.context.scene.camera = cam
    select([suz])
    settings()
    prefs = bpy.context.preferences.addons[bs.MOD].preferences
    prefs.address = ARGS.nocontrol
    prefs.auto_start = False
    rt().disconnect()
    out["connection_before"] = rt().connection
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    run = run_until_done()
    out["phase"], out["message"] = run["phase"], run["message"]
    out["blobs"] = [q["blobs"] for q in run["requests"]]


@scenario
def img2img_without_controlnet(out):
    """An engine without a ControlNet: the first view is image-to-image from a shaded
    capture (strength from the panel)."""
    clear_scene()
    connect(ARGS.nocontrol)
    suz = add("monkey", (0, 0, 0), "Suzanne")
    cam = camera("Cam", (0, -6, 0.5))
    bpy.context.scene.camera = cam
    select([suz])
    settings()
    bpy.context.scene.zimage.strength = 0.45
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    run = run_until_done()
    out["phase"] = run["phase"]
    out["request"] = run["requests"][0]
    req = json.load(open(os.path.join(ARGS.dir_nc, "req_0.json")))
    out["strength"] = req["strength"]
    init = read_png(os.path.join(ARGS.dir_nc, "req_0_init_image.png"))
    out["init_size"] = list(init.shape)
    out["init_centre_vs_corner"] = float(np.abs(init[256, 256].astype(int)
                                                - init[5, 5].astype(int)).sum())
    out["files"] = sorted(os.listdir(ARGS.dir_nc))


@scenario
def readme_all_sides(out):
    """README.md "Blender: texture a model from all sides", with the tiny model: the add-on
    starts the engine, Suzanne, Texture All Sides (4 around + above), 256² views."""
    prefs = bpy.context.preferences.addons[bs.MOD].preferences
    prefs.address = f"tcp://127.0.0.1:{ARGS.local_port}"
    prefs.engine_python = sys.executable
    prefs.engine_dir = ARGS.repo
    prefs.model = ARGS.model
    r = rt()
    r.disconnect()
    assert bpy.ops.zimage.start_engine() == {"FINISHED"}

    def ready():
        info = (r.board.welcome or {}).get("engine") or {}
        return r.connection == "connected" and info.get("state") in ("ready", None) \
            and bool(info.get("model"))
    ok = bs.tick_until(ready, 120)
    out["engine_log"] = r.engine.log_tail(8) if r.engine else []
    assert ok, "the local engine never became ready"
    out["caps"] = sorted(r.board.welcome.get("caps") or [])
    clear_scene()
    bpy.ops.mesh.primitive_monkey_add()              # Add > Mesh > Monkey: selected, active
    suz = bpy.context.active_object
    s = bpy.context.scene.zimage
    s.prompt = "weathered bronze statue"
    p = bpy.context.scene.zimage_projection
    p.texture_size, p.image_size = "1024", "256"
    out["defaults"] = {"views_source": p.views_source, "around": p.views_around,
                       "above": p.view_above, "use_depth": p.use_depth,
                       "sharpness": p.sharpness}
    assert bpy.ops.zimage.project_all() == {"FINISHED"}
    run = run_until_done(timeout=400)
    out["phase"], out["message"] = run["phase"], run["message"]
    out["requests"] = [q["blobs"] for q in run["requests"]]
    out["prompts"] = [q["params"]["prompt"] for q in run["requests"]]
    assert run["phase"] == "succeeded", run["message"]
    mat = suz.active_material
    tex = next(n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE")
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    out["base_color_from_texture"] = any(
        lk.from_node == tex and lk.to_node == bsdf and lk.to_socket.name == "Base Color"
        for lk in mat.node_tree.links)
    out["uv_node"] = [n.uv_map for n in mat.node_tree.nodes if n.type == "UVMAP"]
    out["uv_maps"] = [u.name for u in suz.data.uv_layers]
    px = image_rgb(tex.image)[..., :3]
    out["image"] = {"name": tex.image.name, "size": list(tex.image.size),
                    "packed": tex.image.packed_file is not None,
                    "std": float(px.std()), "coverage": tex.image.get("zimage_coverage")}
    out["history"] = [(h.image_name, h.kind) for h in bpy.context.scene.zimage.history]
    r.stop_engine()


class FakeViewport:
    """Stands in for a 3D viewport (its WINDOW region and RegionView3D), which background
    Blender cannot have: built from a camera, as a viewport looking through it would be."""

    def __init__(self, cam, region_size: tuple[int, int], image_size: tuple[int, int]):
        from types import SimpleNamespace
        depsgraph = bpy.context.evaluated_depsgraph_get()
        proj = cam.calc_matrix_camera(depsgraph, x=image_size[0], y=image_size[1])
        view = cam.matrix_world.inverted()
        self.region = SimpleNamespace(type="WINDOW", width=region_size[0],
                                      height=region_size[1])
        self.rv3d = SimpleNamespace(view_matrix=view, perspective_matrix=proj @ view,
                                    is_perspective=True)

    def find_view3d(self, context):
        from types import SimpleNamespace
        return None, None, self.region, SimpleNamespace(region_3d=self.rv3d)


@scenario
def project_from_the_3d_view(out):
    """Project from View uses the 3D view when there is one (its aspect, its matrices), not
    the scene camera: a round trip through a stand-in viewport."""
    clear_scene()
    connect(ARGS.replay_vp)
    T = checker()
    suz = add("monkey", (0, 0, 0), "Suzanne")
    suz.data.materials.append(t_material(T))
    eye = camera("Eye", (2.5, -5.5, 1.5))
    bpy.context.scene.camera = camera("Elsewhere", (0, 6, 0.5))    # must not be used
    settings()
    rq = addon("core.requests")
    w, h = rq.size_for_aspect(640 / 480, 512 * 512, rq.EngineLimits.from_welcome(
        rt().board.welcome))
    out["size"] = [w, h]
    ref = render(eye, (w, h), os.path.join(ARGS.dir_vp, "reference.png"))
    write_rgb(ref, os.path.join(ARGS.dir_vp, "view_0.png"))
    strip_uvs(suz)
    select([suz])
    capture = addon("blender.capture")
    real, capture.find_view3d = capture.find_view3d, FakeViewport(eye, (640, 480),
                                                                  (w, h)).find_view3d
    try:
        assert bpy.ops.zimage.project_view() == {"FINISHED"}
        out["run"] = run_until_done()
    finally:
        capture.find_view3d = real
    req = json.load(open(os.path.join(ARGS.dir_vp, "req_0.json")))
    out["request_size"] = [req["width"], req["height"]]
    out["compare"] = compare_views(ref, render(eye, (w, h),
                                               os.path.join(ARGS.dir_vp, "after.png")))


def object_state(name: str) -> dict:
    o = bpy.data.objects[name]
    return {"images": sorted(i.name for i in bpy.data.images if not transient(i.name)),
            "materials": sorted(m.name for m in bpy.data.materials),
            "uv_maps": [u.name for u in o.data.uv_layers],
            "slots": [sl.material.name if sl.material else None for sl in o.material_slots],
            "history": len(bpy.context.scene.zimage.history)}


def suzanne_before_a_camera():
    """A fresh scene: Suzanne without UVs, selected, the scene camera in front; the rules
    stand-in engine. Returns the projection settings."""
    clear_scene()
    connect(ARGS.rules)
    suz = add("monkey", (0, 0, 0), "Suzanne")
    strip_uvs(suz)
    bpy.context.scene.camera = camera("Cam", (0, -6, 0.6))
    select([suz])
    return settings()


@scenario
def projection_is_one_undo_step(out):
    """The whole result (new UV map, texture, coverage, material, history) is one undo step:
    undo takes exactly it back, redo brings it again."""
    undo_steps = bs.undo_steps
    suzanne_before_a_camera()
    bpy.ops.ed.undo_push(message="user edit")
    steps_before, before = undo_steps(), object_state("Suzanne")
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    out["phase"] = run_until_done()["phase"]
    steps_after, after = undo_steps(), object_state("Suzanne")
    out.update(before=before, after=after, new_steps=steps_after[len(steps_before):])
    if out["new_steps"] != ["Z-Image: texture from views"]:
        return          # undoing a change without a step of its own may crash Blender
    bpy.ops.ed.undo()
    out["after_undo"] = object_state("Suzanne")
    bpy.ops.ed.redo()
    out["after_redo"] = object_state("Suzanne")


@scenario
def another_file_mid_run(out):
    """Opening another file while a run is baking ends the run: nothing lands in the new
    file, even on an object of the same name."""
    import tempfile
    project = addon("blender.project")
    p = suzanne_before_a_camera()
    p.views_source, p.views_around, p.view_above = "ORBIT", 2, False
    path = os.path.join(tempfile.mkdtemp(prefix="zimage_other_"), "other.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path, copy=True)
    out["phases"] = {}
    for when in ("generating", "absorbing", "preparing", "finishing"):
        assert bpy.ops.zimage.project_all() == {"FINISHED"}
        pump = addon("blender.pump")
        end = time.monotonic() + 60
        seen = []
        while project.current() is not None and time.monotonic() < end:
            pump.tick()
            project.tick()
            run = project.current()
            if run is None or run.phase == when and (when != "preparing" or run.index > 0):
                break
            time.sleep(0.002)
        run = project.current()
        seen = run.phase if run is not None else None
        bpy.ops.wm.open_mainfile(filepath=path)
        at_open = sorted(i.name for i in bpy.data.images if not transient(i.name))
        history_at_open = len(bpy.context.scene.zimage.history)
        end = time.monotonic() + 30
        while project.current() is not None and time.monotonic() < end:
            pump.tick()
            project.tick()
            time.sleep(0.01)
        time.sleep(0.3)                        # a late worker result must change nothing
        pump.tick()
        project.tick()
        o = bpy.data.objects["Suzanne"]
        out["phases"][when] = {
            "caught": seen, "ended": project.current() is None,
            "last": {k: project.last().get(k) for k in ("phase", "message")},
            "uv_maps": [u.name for u in o.data.uv_layers],
            "materials": [sl.material.name if sl.material else None for sl in o.material_slots],
            "images": sorted(i.name for i in bpy.data.images if not transient(i.name)),
            "images_at_open": at_open, "history_at_open": history_at_open,
            "history": len(bpy.context.scene.zimage.history)}
        # back to a scene the next round can start from (the opened file's selection)
        select([bpy.data.objects["Suzanne"]])
        bpy.context.scene.camera = bpy.data.objects["Cam"]
        p = settings()
        p.views_source, p.views_around, p.view_above = "ORBIT", 2, False


@scenario
def linked_from_a_library(out):
    """Objects linked from another file cannot take a texture: skipped with a message before
    anything is sent, while a local object of the same name is textured."""
    import tempfile
    project = addon("blender.project")
    clear_scene()
    connect(ARGS.rules)
    statue = add("monkey", (0, 0, 0), "Suzanne")
    lib = os.path.join(tempfile.mkdtemp(prefix="zimage_lib_"), "statues.blend")
    bpy.data.libraries.write(lib, {statue}, fake_user=True)
    clear_scene()
    with bpy.data.libraries.load(lib, link=True) as (_src, dst):
        dst.objects = ["Suzanne"]
    linked = dst.objects[0]
    bpy.context.scene.collection.objects.link(linked)
    local = add("monkey", (3, 0, 0), "Suzanne")            # the same name, local
    strip_uvs(local)
    bpy.context.scene.camera = camera("Cam", (1.5, -9, 1), (1.5, 0, 0))
    settings()
    out["names"] = [linked.name_full, local.name_full]
    uv_before = [u.name for u in linked.data.uv_layers]
    select([linked])
    try:
        out["only_linked"] = sorted(bpy.ops.zimage.project_view())
    except RuntimeError as exc:
        out["only_linked"], out["only_linked_error"] = ["CANCELLED"], str(exc)
    out["only_linked_run"] = project.current() is not None
    select([linked, local], active=local)
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    run = run_until_done()
    out["phase"], out["message"] = run["phase"], run["message"]
    out["linked_after"] = {"uv": [u.name for u in linked.data.uv_layers], "before": uv_before,
                           "slots": len(linked.material_slots)}
    out["local_after"] = {"uv": [u.name for u in local.data.uv_layers],
                          "material": local.active_material.name if local.active_material
                          else None}
    bs.settings(prompt="bronze statue", seed_random=False, seed=3, steps=2)
    select([linked])
    try:
        out["generate_linked"] = sorted(bpy.ops.zimage.generate_texture())
    except RuntimeError as exc:
        out["generate_linked"], out["generate_linked_error"] = ["CANCELLED"], str(exc)


def face_slots(obj) -> list[int]:
    return [f.material_index for f in obj.data.polygons]


@scenario
def material_slots_and_faces(out):
    """Several material slots: the new material takes the active slot's faces (the others keep
    theirs); started in Edit Mode with faces selected, it takes those faces."""
    clear_scene()
    connect(ARGS.rules)
    bpy.ops.mesh.primitive_cube_add(size=2.0)
    cube = bpy.context.active_object
    cube.name = "Slots"
    for name in ("Paint A", "Paint B"):
        cube.data.materials.append(bpy.data.materials.get(name) or bpy.data.materials.new(name))
    cube.data.polygons.foreach_set("material_index", [0, 0, 0, 1, 1, 1])
    cube.active_material_index = 1
    bpy.context.scene.camera = camera("Cam", (4, -5, 3))
    select([cube])
    settings()
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    out["object_mode"] = {"phase": run_until_done()["phase"], "faces": face_slots(cube),
                          "slots": [sl.material.name for sl in cube.material_slots]}
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="DESELECT")
    bpy.ops.object.mode_set(mode="OBJECT")
    for i in (0, 5):
        cube.data.polygons[i].select = True
    bpy.ops.object.mode_set(mode="EDIT")
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    out["edit_mode"] = {"phase": run_until_done()["phase"], "faces": face_slots(cube),
                        "slots": len(cube.material_slots)}


@scenario
def objects_change_mid_run(out):
    """An object deleted, or its mesh edited, while its texture is being made: the others get
    theirs, the report says which did not, and nothing lands on a changed mesh."""
    project, pump = addon("blender.project"), addon("blender.pump")
    clear_scene()
    connect(ARGS.rules)
    objs = [add("sphere", (x, 0, 0), name) for x, name in ((-3, "Kept"), (0, "Deleted"),
                                                             (3, "Edited"))]
    bpy.context.scene.camera = camera("Cam", (0, -12, 2))
    select(objs)
    settings()
    assert bpy.ops.zimage.project_view() == {"FINISHED"}
    end = time.monotonic() + 30
    while project.current() is not None and project.current().phase != "generating" \
            and time.monotonic() < end:
        pump.tick()
        project.tick()
        time.sleep(0.005)
    out["caught"] = project.current().phase if project.current() else None
    bpy.data.objects.remove(bpy.data.objects["Deleted"])
    bpy.context.view_layer.update()
    edited = bpy.data.objects["Edited"]
    select([edited])
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="SELECT")
    bpy.ops.mesh.subdivide()
    bpy.ops.object.mode_set(mode="OBJECT")
    run = run_until_done()
    out["phase"], out["message"] = run["phase"], run["message"]
    out["images"] = run["images"]
    out["kept_material"] = [sl.material.name for sl in objs[0].material_slots]
    out["edited"] = {"uv": [u.name for u in edited.data.uv_layers],
                     "slots": len(edited.material_slots)}


def rt():
    return bs.rt()


def transient(name: str) -> bool:
    """The live preview and the per-view previews: UI images, replaced by the next run."""
    return name == "Z-Image Preview" or name.startswith("Z-Image View")


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--zip", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--replay1", default="")
    ap.add_argument("--dir1", default="")
    ap.add_argument("--replay6", default="")
    ap.add_argument("--dir6", default="")
    ap.add_argument("--replay-b", default="")
    ap.add_argument("--dir-b", default="")
    ap.add_argument("--rules", default="")
    ap.add_argument("--nocontrol", default="")
    ap.add_argument("--dir-nc", default="")
    ap.add_argument("--replay-vp", default="")
    ap.add_argument("--dir-vp", default="")
    ap.add_argument("--local-port", type=int, default=0)
    ap.add_argument("--repo", default="")
    ap.add_argument("--model", default="")
    ap.add_argument("--scenarios", required=True)
    ARGS = ap.parse_args()
    bs.ARGS = ARGS
    table = {f.__name__: f for f in (install, project_one_view, project_again_adds,
                                     project_six_views, selection_rules,
                                     cancel_applies_nothing, img2img_without_controlnet,
                                     starts_before_the_welcome, project_from_the_3d_view,
                                     projection_is_one_undo_step, another_file_mid_run,
                                     linked_from_a_library, survives_save_and_reopen,
                                     material_slots_and_faces, objects_change_mid_run,
                                     readme_all_sides)}
    for name in [n for n in ARGS.scenarios.split(",") if n]:
        table[name]()
        with open(ARGS.out, "w") as fh:
            json.dump(RESULTS, fh)
        if name == "install" and not RESULTS["install"]["ok"]:
            break
    try:
        r = bs.rt()
        if r is not None:
            r.shutdown()
    except Exception:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
