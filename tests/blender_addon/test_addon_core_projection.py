"""Projection, visibility, facing weights, blending and dilation (bpy-free, numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon.core import projection as pj


# ---- small meshes built here (what Blender hands over: triangles with corner attributes) ----

def quad(z: float, half: float, uv_box=(0.0, 0.0, 1.0, 1.0)) -> pj.Mesh:
    """A square at height z facing +Z, UVs in uv_box."""
    p = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    u0, v0, u1, v1 = uv_box
    uv = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])
    tris = [(0, 1, 2), (0, 2, 3)]
    n = np.tile([0.0, 0.0, 1.0], (2, 3, 1))
    return pj.Mesh(p[list(tris)], n, uv[list(tris)])


def uv_sphere(rings: int = 24, segments: int = 48, radius: float = 1.0) -> pj.Mesh:
    """Lat-long sphere: u = longitude, v = latitude (one UV island with a seam)."""
    pos, nrm, uvs = [], [], []

    def vert(i, j):
        th = math.pi * i / rings                 # 0 at the top
        ph = 2 * math.pi * j / segments
        n = np.array([math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th)])
        return n * radius, n, np.array([j / segments, 1.0 - i / rings])
    for i in range(rings):
        for j in range(segments):
            a, b, c, d = vert(i, j), vert(i + 1, j), vert(i + 1, j + 1), vert(i, j + 1)
            for t in ((a, b, c), (a, c, d)):
                pos.append([v[0] for v in t])
                nrm.append([v[1] for v in t])
                uvs.append([v[2] for v in t])
    return pj.Mesh(np.array(pos), np.array(nrm), np.array(uvs))


def checker(size: int, cells: int = 8) -> np.ndarray:
    """A colour checker: a distinct colour per cell, (S,S,3) float32."""
    rng = np.random.default_rng(3)
    colours = rng.uniform(0.1, 0.9, (cells, cells, 3)).astype(np.float32)
    k = np.arange(size) * cells // size
    return colours[k[:, None], k[None, :]]


def camera(eye, target=(0, 0, 0), size=(256, 256), fov=math.radians(50)) -> pj.View:
    w, h = size
    return pj.View.from_camera(pj.look_at(eye, target), pj.perspective(fov, w, h), w, h)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


# ---- rasteriser ----------------------------------------------------------------------------

def test_two_triangles_cover_the_square_exactly_once():
    m = quad(0.0, 1.0)
    r = pj.rasterize(m.uvs * 64, 64, 64)
    assert r.covered.all()                                  # no gap on the shared diagonal
    assert set(np.unique(r.tri)) == {0, 1}
    # barycentrics reproduce the position they were taken from
    pos = pj.interpolate(r, m.uvs * 64)
    ys, xs = np.nonzero(r.covered)
    assert np.allclose(pos[:, 0], xs + 0.5, atol=1e-4)
    assert np.allclose(pos[:, 1], ys + 0.5, atol=1e-4)


def test_half_triangle_covers_half_the_pixels_and_nothing_outside():
    xy = np.array([[[0, 0], [32, 0], [0, 32]]], np.float64)
    r = pj.rasterize(xy, 32, 32)
    assert abs(r.covered.sum() - 32 * 32 / 2) <= 32
    ys, xs = np.nonzero(r.covered)
    assert ((xs + 0.5) + (ys + 0.5) <= 32 + 1e-6).all()


def test_zbuffer_keeps_the_nearest_surface():
    front, back = quad(1.0, 0.5), quad(0.0, 2.0)
    mesh = pj.Mesh.concat([back, front])                    # back drawn first and last
    mesh = pj.Mesh.concat([mesh, back])
    view = camera((0, 0, 5))
    r = pj.render_depth(mesh, view)
    c = r.tri[128, 128]
    assert c in (2, 3)                                      # a front triangle at the centre
    assert abs(r.depth[128, 128] - 4.0) < 1e-6              # 5 - 1
    assert abs(r.depth[5, 128] - 5.0) < 0.2 or not np.isfinite(r.depth[5, 128])


def test_depth_image_is_near_bright_far_dark_background_black():
    d = np.array([[np.inf, 2.0, 3.0], [4.0, np.inf, 2.5]])
    img = pj.depth_image(d)
    assert img.dtype == np.uint8
    assert img[0, 1] == 255 and img[1, 0] == 0 and img[0, 0] == 0 and img[1, 1] == 0
    assert 0 < img[0, 2] < img[1, 2] < 255
    assert (pj.depth_image(np.full((2, 2), np.inf)) == 0).all()


# ---- texels, visibility, facing ------------------------------------------------------------

def test_texel_map_positions_and_normals():
    m = quad(0.0, 1.0)
    t = pj.texel_map(m, 32)
    assert len(t.index) == 32 * 32 and t.valid.all()
    # texel (row 0, col 0) is at u, v = (0.5/32, 0.5/32): the corner (-1, -1)
    i = int(np.flatnonzero(t.index == 0)[0])
    assert np.allclose(t.position[i], [-1 + 1 / 32, -1 + 1 / 32, 0], atol=1e-6)
    assert np.allclose(t.normal, [0, 0, 1])


def test_occluded_texels_receive_nothing():
    back = quad(0.0, 2.0, (0.0, 0.0, 0.5, 1.0))            # left half of the texture
    front = quad(1.0, 0.5, (0.5, 0.0, 1.0, 1.0))           # right half
    mesh = pj.Mesh.concat([back, front])
    view = camera((0, 0, 6), size=(128, 128))
    tex = pj.texel_map(mesh, 64)
    zbuf = pj.render_depth(mesh, view).depth
    image = np.full((128, 128, 3), 200, np.uint8)
    p = pj.project(tex, view, zbuf, image)
    on_back = tex.index % 64 < 32
    xy = tex.position[:, :2]
    hidden = on_back & (np.abs(xy) < 0.45).all(1)          # behind the front square
    clear = on_back & (np.abs(xy) > 0.6).any(1) & (np.abs(xy) < 1.4).all(1)
    _vis, edge = pj.visible(tex, view, zbuf)
    assert hidden.sum() > 20 and (p.weight[hidden] == 0).all()
    assert (p.weight[clear & ~edge] > 0.5).all()
    assert (p.weight[~on_back & ~edge] > 0.5).all()        # the front square itself
    # near the outlines the weight is small, but the texels are still seen
    assert (edge & clear).any() and (p.weight[clear & edge] > 0).all()
    assert np.allclose(p.weight[clear & edge], p.facing[clear & edge] ** 2 * pj.EDGE_WEIGHT)
    assert np.allclose(p.color[clear], 200 / 255, atol=1e-5)


def test_facing_weight_falls_with_the_angle():
    m = quad(0.0, 1.0)
    tex = pj.texel_map(m, 16)
    head_on = camera((0, 0, 5))
    grazing = camera((0, -5 * math.cos(math.radians(15)), 5 * math.sin(math.radians(15))))
    behind = camera((0, 0, -5))
    f0 = pj.facing(tex, head_on)
    f1 = pj.facing(tex, grazing)
    assert f0.min() > 0.95 and 0.1 < f1.mean() < 0.45
    assert (pj.facing(tex, behind) == 0).all()
    for view, expect in ((head_on, f0), (grazing, f1)):
        z = pj.render_depth(m, view).depth
        p = pj.project(tex, view, z, np.zeros((256, 256, 3), np.uint8), sharpness=2.0)
        seen = (p.weight > 0) & ~pj.visible(tex, view, z)[1]
        assert np.allclose(p.weight[seen], expect[seen] ** 2, atol=1e-5)


def test_colours_come_only_from_pixels_of_the_texels_own_surface():
    """At an outline and at a depth step the bilinear neighbours that show another surface (or
    the background) are left out, so no colour bleeds across."""
    back = quad(0.0, 2.0, (0.0, 0.0, 0.5, 1.0))
    front = quad(1.0, 0.5, (0.5, 0.0, 1.0, 1.0))
    mesh = pj.Mesh.concat([back, front])
    view = camera((0, 0, 6), size=(128, 128))
    r = pj.render_depth(mesh, view)
    image = np.zeros((128, 128, 3), np.uint8)              # background black
    image[r.covered] = 90                                   # back square grey
    image[r.tri >= 2] = 250                                 # front square white
    tex = pj.texel_map(mesh, 64)
    p = pj.project(tex, view, r.depth, image)
    seen = p.weight > 0
    on_back = tex.index % 64 < 32
    assert np.allclose(p.color[seen & on_back], 90 / 255, atol=1e-5)
    assert np.allclose(p.color[seen & ~on_back], 250 / 255, atol=1e-5)


def test_image_of_the_wrong_size_is_refused():
    m = quad(0.0, 1.0)
    view = camera((0, 0, 5))
    with pytest.raises(ValueError, match="image is 8x8"):
        pj.project(pj.texel_map(m, 8), view, pj.render_depth(m, view).depth,
                   np.zeros((8, 8, 3), np.uint8))


# ---- round trips ---------------------------------------------------------------------------

def test_sphere_round_trip_one_view():
    """Render T from a view, project the image back into an empty texture: the texels the view
    sees head-on get T back."""
    mesh = uv_sphere()
    size = 128
    T = checker(size)
    view = camera((0, -4, 1), size=(384, 384))
    raster = pj.render_depth(mesh, view)
    image, mask = pj.render_texture(mesh, view, raster, T, np.ones((size, size), np.float32))
    assert not mask.any()                                   # all covered: nothing to paint
    tex = pj.texel_map(mesh, size)
    bake = pj.Bake(tex)
    p = pj.project(tex, view, raster.depth, image)
    bake.add(p)
    out = bake.texture()
    good = tex.index[p.facing > 0.5]
    cells = np.arange(size) * 8 // size                    # away from checker edges
    inner = ((np.arange(size) * 8) % size >= size // 16)
    keep = inner[good // size] & inner[good % size]
    a = out.reshape(-1, 3)[good[keep]]
    b = T.reshape(-1, 3)[good[keep]]
    assert len(good) > 0.1 * len(tex.index)
    assert psnr(a, b) >= 30, psnr(a, b)
    unseen = tex.index[p.facing == 0]
    assert np.allclose(out.reshape(-1, 3)[unseen], pj.NEUTRAL)    # neutral fill
    assert cells.max() == 7


def test_sphere_round_trip_six_views_covers_everything():
    mesh = uv_sphere()
    size = 128
    T = checker(size)
    tex = pj.texel_map(mesh, size)
    bake = pj.Bake(tex)
    poses = pj.orbit_poses((0, 0, 0), 1.0, math.radians(50), around=4, above=True)
    poses.append(pj.look_at((0, 0, -4), (0, 0, 0)))
    for pose in poses:
        view = pj.View.from_camera(pose, pj.perspective(math.radians(50), 256, 256), 256, 256)
        raster = pj.render_depth(mesh, view)
        image, _ = pj.render_texture(mesh, view, raster, T, np.ones((size, size), np.float32))
        bake.add(pj.project(tex, view, raster.depth, image))
    assert bake.covered_fraction() >= 0.99
    out = bake.texture()
    assert psnr(out.reshape(-1, 3)[tex.index], T.reshape(-1, 3)[tex.index]) >= 24


def test_later_view_mask_marks_what_is_not_yet_covered():
    mesh = uv_sphere()
    size = 64
    tex = pj.texel_map(mesh, size)
    bake = pj.Bake(tex)
    front = camera((0, -4, 0))
    r = pj.render_depth(mesh, front)
    bake.add(pj.project(tex, front, r.depth, np.full((256, 256, 3), 255, np.uint8)))
    side = camera((4, 0, 0))
    rs = pj.render_depth(mesh, side)
    image, mask = pj.render_texture(mesh, side, rs, bake.texture(), bake.coverage_map())
    obj = rs.covered
    assert not mask[~obj].any()                             # background: nothing to paint
    # seen from +X, the front (-Y) hemisphere is on the image's left: white texture, covered;
    # the back half is on the right: neutral and masked (the sphere spans x 57..199; near
    # the middle the front view saw it at a poor angle, so it is masked too)
    band = (np.arange(256)[:, None] > 100) & (np.arange(256)[:, None] < 156)   # the equator
    left = obj & (np.arange(256)[None, :] < 70) & band
    right = obj & (np.arange(256)[None, :] > 146)
    assert (mask[right] == 255).all() and (mask[left] == 0).all()
    assert (image[right] == round(pj.NEUTRAL * 255)).all()
    assert (image[left & (mask == 0)] > 200).all()


def test_projecting_again_adds_to_the_previous_texture():
    m = quad(0.0, 1.0, (0.0, 0.0, 0.5, 1.0))               # the left half of the texture only
    size = 16
    tex = pj.texel_map(m, size)
    prev = np.zeros((size, size, 3), np.float32)
    prev[..., 0] = 1.0                                      # red where covered before
    cov = np.zeros((size, size), np.float32)
    cov[:, :4] = 1.0                                        # the first quarter was covered
    bake = pj.Bake(tex, prev, cov)
    out = bake.texture()
    assert np.allclose(out, prev)                           # nothing added: unchanged
    view = camera((0, 0, 5))
    z = pj.render_depth(m, view).depth
    bake.add(pj.project(tex, view, z, np.full((256, 256, 3), 255, np.uint8)))
    out = bake.texture()
    assert np.allclose(out[:, 4:8], 1.0, atol=1e-5)         # only the new view: white
    assert (out[:, :4, 1] > 0.3).all() and (out[:, :4, 1] < 0.7).all()   # mixed with red
    assert np.allclose(out[:, 8:], prev[:, 8:])             # outside the islands: as before


def test_dilation_fills_the_margin_and_keeps_the_islands():
    valid = np.zeros((16, 16), bool)
    valid[4:8, 4:8] = True
    tex = np.zeros((16, 16, 3), np.float32)
    tex[valid] = [0.2, 0.4, 0.6]
    out = pj.dilate(tex, valid, 2)
    assert np.allclose(out[valid], [0.2, 0.4, 0.6])
    assert np.allclose(out[2, 5], [0.2, 0.4, 0.6]) and np.allclose(out[5, 9], [0.2, 0.4, 0.6])
    assert np.allclose(out[1, 5], 0) and np.allclose(out[12, 12], 0)   # beyond the margin
    full = pj.dilate(tex, valid, 100)
    assert np.allclose(full, [0.2, 0.4, 0.6])              # stops once everything is filled
    assert np.allclose(pj.dilate(tex, np.zeros_like(valid), 3), tex)   # nothing to grow from


def test_orbit_poses_look_at_the_centre_and_frame_it():
    poses = pj.orbit_poses((1, 2, 3), 2.0, math.radians(40), around=4, above=True)
    assert len(poses) == 5
    for m in poses:
        view = pj.View.from_camera(m, pj.perspective(math.radians(40), 64, 64), 64, 64)
        x, y, d, _ = view.to_screen(np.array([[1.0, 2, 3]]))
        assert abs(x[0] - 32) < 1e-6 and abs(y[0] - 32) < 1e-6 and d[0] > 2.0
    assert np.allclose(poses[0][:3, 3][:2], [1, 2 - np.linalg.norm(poses[0][:3, 3] -
                                                                    [1, 2, 3]) *
                                              math.cos(math.radians(15))], atol=1e-6)
    assert np.allclose(poses[4][:3, 3][:2], [1, 2])         # straight above


def test_fill_margins_keeps_islands_and_fills_gaps_from_the_nearest_island():
    valid = np.zeros((64, 64), bool)
    valid[4:20, 4:20] = True                                # red island
    valid[40:60, 40:60] = True                              # blue island
    tex = np.zeros((64, 64, 3), np.float32)
    tex[4:20, 4:20] = [1, 0, 0]
    tex[40:60, 40:60] = [0, 0, 1]
    out = pj.fill_margins(tex, valid)
    assert np.array_equal(out[valid], tex[valid])
    assert np.isfinite(out).all() and (out[~valid].sum(-1) > 0.99).all()
    assert np.allclose(out[3, 10], [1, 0, 0]) and np.allclose(out[12, 20], [1, 0, 0])
    assert np.allclose(out[60, 50], [0, 0, 1]) and np.allclose(out[50, 39], [0, 0, 1])
    odd = pj.fill_margins(tex[:63, :61], valid[:63, :61])  # odd sizes
    assert odd.shape == (63, 61, 3) and np.allclose(odd[3, 10], [1, 0, 0])
