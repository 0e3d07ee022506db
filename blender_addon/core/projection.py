"""Projecting generated views onto a mesh and baking them into its UV texture. numpy, no bpy.

Blender hands over triangles (world positions, normals and UVs per corner) and, per view, a
world -> clip matrix (OpenGL convention, the one Blender's `calc_matrix_camera` returns).
Everything else happens here:

* `rasterize`: a vectorised triangle rasteriser with a z-buffer (screen space) or without one
  (UV space, where islands do not overlap);
* `texel_map`: which texels of an S x S texture the mesh covers, and the surface point and
  normal behind each;
* `render_depth` + `depth_image`: the view's depth, and the 8-bit depth condition (near bright,
  far dark over the visible range, background black);
* `project`: per texel, the colour a view gives it and its weight = visibility (depth test)
  x facing^sharpness (texels seen at a grazing angle count less);
* `Bake`: blends views per texel by weight, keeps the coverage (best facing so far), renders the
  texture-so-far and its "still to paint" mask from a view, and dilates into the UV margins.

Textures are (S, S, 3) float32 in 0..1 with row 0 at v = 0 (bottom), which is Blender's pixel
order, so nothing is flipped on the way in or out. Images from the engine are (H, W, 3) uint8,
rows top-down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NEUTRAL = 0.5            # fill of texels no view has seen
POOR_FACING = 0.35       # best cos(angle) below this (about 70 deg) counts as poorly covered
SLOPE_PX = 1.5           # pixels of slope allowance in the depth test ...
SLOPE_COS = 0.3          # ... for surfaces seen at up to about 73 degrees
CHUNK = 1 << 19          # candidate pixels per rasteriser batch (bounds the memory)
TEXEL_CHUNK = 1 << 18    # texels per projection batch


# ---- geometry ------------------------------------------------------------------------------

@dataclass
class Mesh:
    """Triangles of one object in world space: positions (T,3,3), normals (T,3,3), uvs (T,3,2)."""
    positions: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray

    def __post_init__(self):
        self.positions = np.asarray(self.positions, np.float64).reshape(-1, 3, 3)
        self.normals = np.asarray(self.normals, np.float64).reshape(-1, 3, 3)
        self.uvs = np.asarray(self.uvs, np.float64).reshape(-1, 3, 2)
        if not (len(self.positions) == len(self.normals) == len(self.uvs)):
            raise ValueError("positions, normals and uvs need one entry per triangle corner")

    @classmethod
    def concat(cls, meshes: list["Mesh"]) -> "Mesh":
        return cls(np.concatenate([m.positions for m in meshes]),
                   np.concatenate([m.normals for m in meshes]),
                   np.concatenate([m.uvs for m in meshes]))

    def __len__(self) -> int:
        return len(self.positions)


@dataclass
class View:
    """A pinhole (or orthographic) view: world -> clip matrix and the image size in pixels."""
    world_to_clip: np.ndarray
    width: int
    height: int
    eye: np.ndarray          # camera position (perspective) ...
    forward: np.ndarray      # ... and viewing direction (unit)
    ortho: bool = False

    def __post_init__(self):
        self.world_to_clip = np.asarray(self.world_to_clip, np.float64).reshape(4, 4)
        self.eye = np.asarray(self.eye, np.float64).reshape(3)
        f = np.asarray(self.forward, np.float64).reshape(3)
        self.forward = f / max(np.linalg.norm(f), 1e-12)

    @classmethod
    def from_camera(cls, cam_to_world, projection, width: int, height: int,
                    ortho: bool = False) -> "View":
        """Blender's camera convention: the camera looks down its -Z, +Y is up."""
        m = np.asarray(cam_to_world, np.float64).reshape(4, 4)
        return cls(np.asarray(projection, np.float64) @ np.linalg.inv(m), width, height,
                   m[:3, 3], -m[:3, 2], ortho)

    def to_screen(self, points: np.ndarray):
        """(x, y) in pixels (rows top-down, pixel centres at +0.5), view depth, clip w."""
        p = np.asarray(points, np.float64)
        clip = p @ self.world_to_clip[:3, :3].T + self.world_to_clip[:3, 3]
        w = p @ self.world_to_clip[3, :3] + self.world_to_clip[3, 3]
        safe = np.where(np.abs(w) < 1e-12, 1e-12, w)
        x = (clip[..., 0] / safe * 0.5 + 0.5) * self.width
        y = (0.5 - clip[..., 1] / safe * 0.5) * self.height
        depth = (p - self.eye) @ self.forward
        return x, y, depth, w


def perspective(fov_x: float, width: int, height: int, near: float = 0.01,
                far: float = 1000.0) -> np.ndarray:
    """OpenGL projection with a horizontal field of view (Blender's sensor fit for w >= h)."""
    fx = 1.0 / math.tan(fov_x / 2)
    fy = fx * width / height
    return np.array([[fx, 0, 0, 0], [0, fy, 0, 0],
                     [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
                     [0, 0, -1, 0]], np.float64)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera -> world matrix of a camera at `eye` looking at `target` (Blender convention)."""
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    back = eye - target
    back /= max(np.linalg.norm(back), 1e-12)
    up = np.asarray(up, np.float64)
    if abs(back @ up) > 0.999:               # looking straight down/up: any horizontal "up"
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, true_up, back, eye
    return m


def orbit_poses(center, radius: float, fov: float, around: int = 4, above: bool = True,
                elevation_deg: float = 15.0, margin: float = 1.15) -> list[np.ndarray]:
    """Camera -> world matrices framing a sphere (center, radius): `around` views at a slight
    elevation, evenly spaced (the first from -Y, Blender's front), then one from above."""
    center = np.asarray(center, np.float64)
    dist = radius * margin / math.sin(fov / 2)
    poses = []
    el = math.radians(elevation_deg)
    for k in range(around):
        az = -math.pi / 2 + 2 * math.pi * k / max(1, around)
        d = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        poses.append(look_at(center + dist * d, center))
    if above:
        poses.append(look_at(center + np.array([0.0, 0.0, dist]), center))
    return poses


# ---- rasteriser ----------------------------------------------------------------------------

@dataclass
class Raster:
    """Per pixel: triangle index (-1 = none), barycentrics (perspective-correct when clip w was
    given) and, with a z-buffer, the depth."""
    tri: np.ndarray
    bary: np.ndarray
    depth: np.ndarray | None = None

    @property
    def covered(self) -> np.ndarray:
        return self.tri >= 0


def rasterize(xy: np.ndarray, width: int, height: int, depth: np.ndarray | None = None,
              clip_w: np.ndarray | None = None) -> Raster:
    """Rasterise triangles xy (T,3,2) in pixel coordinates (pixel centres at +0.5).

    depth (T,3): keep the nearest per pixel (interpolated perspective-correctly when clip_w
    (T,3) is given). Without depth the last triangle wins (UV space: islands do not overlap).
    """
    xy = np.asarray(xy, np.float64)
    n = len(xy)
    tri_out = np.full(height * width, -1, np.int32)
    bary_out = np.zeros((height * width, 3), np.float32)
    zbuf = np.full(height * width, np.inf, np.float64) if depth is not None else None
    if n == 0:
        return Raster(tri_out.reshape(height, width), bary_out.reshape(height, width, 3),
                      None if zbuf is None else zbuf.reshape(height, width))
    x, y = xy[..., 0], xy[..., 1]
    x0 = np.clip(np.ceil(x.min(1) - 0.5), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(x.max(1) - 0.5), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(y.min(1) - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(y.max(1) - 0.5), -1, height - 1).astype(np.int64)
    nx, ny = np.maximum(x1 - x0 + 1, 0), np.maximum(y1 - y0 + 1, 0)
    area = ((x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0]))
    ok = (nx > 0) & (ny > 0) & (np.abs(area) > 1e-12)
    if depth is not None:
        depth = np.asarray(depth, np.float64)
        ok &= (depth > 0).all(1) if clip_w is not None else True
    ids = np.flatnonzero(ok)
    counts = (nx * ny)[ids]
    # batches of triangles with about CHUNK candidate pixels each
    ends = np.searchsorted(np.cumsum(counts), np.arange(CHUNK, counts.sum() + CHUNK, CHUNK),
                           side="right")
    start = 0
    for end in np.unique(np.append(ends, len(ids))):
        if end <= start:
            continue
        t_ids, cnt = ids[start:end], counts[start:end]
        start = end
        t = np.repeat(t_ids, cnt)
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        k = np.arange(len(t)) - first
        px = x0[t] + k % nx[t]
        py = y0[t] + k // nx[t]
        cx, cy = px + 0.5, py + 0.5
        xa, ya = x[t], y[t]
        inv = 1.0 / area[t]
        b0 = ((xa[:, 1] - cx) * (ya[:, 2] - cy) - (xa[:, 2] - cx) * (ya[:, 1] - cy)) * inv
        b1 = ((xa[:, 2] - cx) * (ya[:, 0] - cy) - (xa[:, 0] - cx) * (ya[:, 2] - cy)) * inv
        b2 = 1.0 - b0 - b1
        eps = -1e-7
        inside = (b0 >= eps) & (b1 >= eps) & (b2 >= eps)
        t, px, py = t[inside], px[inside], py[inside]
        b = np.stack([b0[inside], b1[inside], b2[inside]], 1)
        if clip_w is not None:                       # perspective-correct barycentrics
            b = b / np.asarray(clip_w, np.float64)[t]
            b /= b.sum(1, keepdims=True)
        pix = py * width + px
        if zbuf is not None:
            z = (b * depth[t]).sum(1)
            np.minimum.at(zbuf, pix, z)
            win = z <= zbuf[pix]
            t, pix, b = t[win], pix[win], b[win]
        tri_out[pix] = t
        bary_out[pix] = b
    return Raster(tri_out.reshape(height, width), bary_out.reshape(height, width, 3),
                  None if zbuf is None else zbuf.reshape(height, width))


def interpolate(raster: Raster, corner_values: np.ndarray, where: np.ndarray | None = None
                ) -> np.ndarray:
    """Per covered pixel (or the flat indices `where`), the barycentric mix of corner values
    (T,3,C), as float32 (in batches, so a 4096² texture does not need gigabytes)."""
    flat_tri = raster.tri.reshape(-1)
    idx = np.flatnonzero(flat_tri >= 0) if where is None else where
    values = np.asarray(corner_values)
    out = np.empty((len(idx), values.shape[-1]), np.float32)
    bary = raster.bary.reshape(-1, 3)
    for sl in _slices(len(idx)):
        t = flat_tri[idx[sl]]
        out[sl] = np.einsum("nk,nkc->nc", bary[idx[sl]], values[t].astype(np.float32))
    return out


# ---- texels --------------------------------------------------------------------------------

@dataclass
class TexelMap:
    """The texels of an S x S texture that the mesh covers: flat indices, surface points and
    unit normals behind them (world space)."""
    size: int
    index: np.ndarray        # (N,) flat indices into S*S, row 0 = v 0
    position: np.ndarray     # (N,3)
    normal: np.ndarray       # (N,3)

    @property
    def valid(self) -> np.ndarray:
        v = np.zeros(self.size * self.size, bool)
        v[self.index] = True
        return v.reshape(self.size, self.size)


def texel_map(mesh: Mesh, size: int) -> TexelMap:
    raster = rasterize(mesh.uvs * size, size, size)
    idx = np.flatnonzero(raster.tri.reshape(-1) >= 0)
    pos = interpolate(raster, mesh.positions, idx)
    nrm = interpolate(raster, mesh.normals, idx)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    return TexelMap(size, idx, pos, nrm)


# ---- views ---------------------------------------------------------------------------------

def render_depth(mesh: Mesh, view: View) -> Raster:
    """The mesh's z-buffer from the view (view-space depth; inf where nothing is hit)."""
    x, y, d, w = view.to_screen(mesh.positions)
    return rasterize(np.stack([x, y], -1), view.width, view.height, depth=d,
                     clip_w=None if view.ortho else w)


def depth_image(depth: np.ndarray) -> np.ndarray:
    """The depth condition: uint8 (H,W), nearest visible surface 255, farthest 0, background 0
    (the convention of core.pixels.normalise_depth, which the concept capture uses)."""
    hit = np.isfinite(depth)
    out = np.zeros(depth.shape, np.uint8)
    if not hit.any():
        return out
    near, far = depth[hit].min(), depth[hit].max()
    span = far - near
    if span <= 1e-9:
        out[hit] = 255
        return out
    out[hit] = np.round((far - depth[hit]) * (255.0 / span)).astype(np.uint8)
    return out


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of an (H,W,C) array at pixel coordinates (centres at +0.5), clamped."""
    h, w = image.shape[:2]
    fx = np.clip(x - 0.5, 0, w - 1)
    fy = np.clip(y - 0.5, 0, h - 1)
    ix, iy = np.minimum(fx.astype(np.int64), w - 2 if w > 1 else 0), \
        np.minimum(fy.astype(np.int64), h - 2 if h > 1 else 0)
    ax, ay = (fx - ix)[:, None], (fy - iy)[:, None]
    ix1, iy1 = np.minimum(ix + 1, w - 1), np.minimum(iy + 1, h - 1)
    img = image.reshape(h, w, -1)
    top = img[iy, ix] * (1 - ax) + img[iy, ix1] * ax
    bot = img[iy1, ix] * (1 - ax) + img[iy1, ix1] * ax
    return top * (1 - ay) + bot * ay


def facing(texels: TexelMap, view: View) -> np.ndarray:
    """cos of the angle between each texel's normal and the direction to the camera (>= 0)."""
    return _facing(texels.position, texels.normal, view)


def _facing(position: np.ndarray, normal: np.ndarray, view: View) -> np.ndarray:
    if view.ortho:
        to_eye = np.broadcast_to(-view.forward, position.shape)
    else:
        to_eye = view.eye - position
        to_eye = to_eye / np.maximum(np.linalg.norm(to_eye, axis=1, keepdims=True), 1e-12)
    return np.clip((normal * to_eye).sum(1), 0.0, 1.0)


def _view_checks(view: View, zbuf: np.ndarray, tolerance: float):
    """Per view, once: the depth bias and the edge map."""
    hit = np.isfinite(zbuf)
    span = (zbuf[hit].max() - zbuf[hit].min()) if hit.any() else 0.0
    bias = tolerance * max(span, 1e-6) + 1e-6
    return bias, depth_edges(zbuf, bias)


def _slices(n: int):
    for start in range(0, n, TEXEL_CHUNK):
        yield slice(start, min(n, start + TEXEL_CHUNK))


def _lookup(position: np.ndarray, normal: np.ndarray, view: View, zbuf: np.ndarray,
            bias: float, edges: np.ndarray):
    """For some texels: their 4 bilinear pixels and weights, keeping only the pixels that show
    the texel's own surface (their depth agrees with the texel's, within the bias plus what
    the surface's slope explains across those pixels), and whether they are near an edge."""
    x, y, d, _w = view.to_screen(position)
    h, w = zbuf.shape
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h) & (d > 0)
    # world size of one pixel at the texel's depth, and the depth step a slope makes over it
    scale = np.linalg.norm(view.world_to_clip[0, :3]) * w / 2.0
    pixel = (np.maximum(d, 1e-9) if not view.ortho else np.ones_like(d)) / max(scale, 1e-12)
    cos = np.maximum(_facing(position, normal, view), SLOPE_COS)
    tol = bias + SLOPE_PX * pixel * np.sqrt(1.0 - cos * cos) / cos
    fx, fy = x - 0.5, y - 0.5
    x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    ax, ay = fx - x0, fy - y0
    idx = np.empty((len(x), 4), np.int64)
    wts = np.empty((len(x), 4), np.float32)
    flat = zbuf.reshape(-1)
    for k, (dy, dx, wt) in enumerate(((0, 0, (1 - ax) * (1 - ay)), (0, 1, ax * (1 - ay)),
                                      (1, 0, (1 - ax) * ay), (1, 1, ax * ay))):
        px, py = x0 + dx, y0 + dy
        ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        idx[:, k] = np.clip(py, 0, h - 1) * w + np.clip(px, 0, w - 1)
        with np.errstate(invalid="ignore"):
            same = ok & (np.abs(flat[idx[:, k]] - d) <= tol)
        wts[:, k] = np.where(same, wt, 0.0)
    total = wts.sum(1)
    vis = inside & (total > 1e-6)
    wts = np.where(vis[:, None], wts / np.maximum(total, 1e-12)[:, None], 0.0)
    edge = edges[np.clip(y.astype(np.int64), 0, h - 1), np.clip(x.astype(np.int64), 0, w - 1)]
    return vis, edge, idx, wts


def visible(texels: TexelMap, view: View, zbuf: np.ndarray, tolerance: float = 0.01
            ) -> tuple[np.ndarray, np.ndarray]:
    """(visible (N,) bool, near_edge (N,) bool).

    Visible: in the frame, and at least one of the pixels around the texel's projection shows
    its surface (depth test with a bias of `tolerance` x the visible depth range, widened by
    the surface's slope); occluded surfaces receive nothing. Surfaces thinner than a pixel are
    missed (docs/texture-projection.md). Near an edge: within EDGE_PX pixels of the outline or
    of a depth step, where the image's pixels mix two surfaces."""
    bias, edges = _view_checks(view, zbuf, tolerance)
    n = len(texels.index)
    vis, edge = np.zeros(n, bool), np.zeros(n, bool)
    for sl in _slices(n):
        vis[sl], edge[sl], _i, _w = _lookup(texels.position[sl], texels.normal[sl], view, zbuf,
                                            bias, edges)
    return vis, edge


EDGE_PX = 2              # pixels around outlines and depth steps that count as "edge"
EDGE_WEIGHT = 0.02       # their weight factor: used only where no view sees the texel better


def depth_edges(zbuf: np.ndarray, bias: float) -> np.ndarray:
    """(H,W) bool: within EDGE_PX pixels of the outline or of a depth step larger than bias."""
    far = np.where(np.isfinite(zbuf), zbuf, np.inf)
    hi = _local_max(far)                     # inf next to the background
    lo = -_local_max(-far)
    with np.errstate(invalid="ignore"):
        edge = ~np.isfinite(far) | ~(hi - lo <= bias)
    for _ in range(EDGE_PX - 1):
        edge = _local_max(np.where(edge, 1.0, 0.0)) > 0
    return edge


def _local_max(a: np.ndarray) -> np.ndarray:
    """3x3 maximum, with -inf outside."""
    p = np.pad(a, 1, constant_values=-np.inf)
    h, w = a.shape
    out = a.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            np.maximum(out, p[dy:dy + h, dx:dx + w], out=out)
    return out


@dataclass
class Projection:
    """One view's contribution: per texel colour (N,3) 0..1, weight (N,), facing (N,)."""
    color: np.ndarray
    weight: np.ndarray
    facing: np.ndarray


def project(texels: TexelMap, view: View, zbuf: np.ndarray, image: np.ndarray,
            sharpness: float = 2.0) -> Projection:
    """The colours a view's image gives the texels, weighted by visibility x facing^sharpness."""
    img = np.asarray(image)
    if img.shape[:2] != (view.height, view.width):
        raise ValueError(f"the image is {img.shape[1]}x{img.shape[0]}, the view "
                         f"{view.width}x{view.height}")
    bias, edges = _view_checks(view, zbuf, 0.01)
    rgb = img.reshape(-1, img.shape[2] if img.ndim == 3 else 1)[:, :3].astype(np.float32)
    n = len(texels.index)
    color = np.zeros((n, 3), np.float32)
    weight = np.zeros(n, np.float32)
    cos = np.zeros(n, np.float32)
    for sl in _slices(n):
        pos, nrm = texels.position[sl], texels.normal[sl]
        vis, edge, idx, wts = _lookup(pos, nrm, view, zbuf, bias, edges)
        c = _facing(pos, nrm, view) * vis
        color[sl] = np.einsum("nk,nkc->nc", wts, rgb[idx]) / 255.0
        w = np.where(vis, c ** max(sharpness, 0.0), 0.0) * (c > 1e-3)
        weight[sl] = w * np.where(edge, EDGE_WEIGHT, 1.0)
        cos[sl] = c
    return Projection(color, weight, cos)


# ---- baking --------------------------------------------------------------------------------

class Bake:
    """The texture being built from views: weighted colour sums per texel plus the coverage
    (best facing so far). Starts from a previous texture (its colour counts with the weight of
    its own coverage) or from the neutral fill."""

    def __init__(self, texels: TexelMap, previous: np.ndarray | None = None,
                 previous_coverage: np.ndarray | None = None):
        self.texels = texels
        n = len(texels.index)
        self.sum = np.zeros((n, 3), np.float32)
        self.weight = np.zeros(n, np.float32)
        self.coverage = np.zeros(n, np.float32)
        s = texels.size
        if previous is not None and previous_coverage is not None:
            prev = np.asarray(previous, np.float32).reshape(s * s, -1)[texels.index, :3]
            cov = np.asarray(previous_coverage, np.float32).reshape(s * s)[texels.index]
            self.sum += prev * cov[:, None]
            self.weight += cov
            self.coverage = cov.copy()
        self.base = (np.asarray(previous, np.float32).reshape(s, s, -1)[..., :3].copy()
                     if previous is not None else np.full((s, s, 3), NEUTRAL, np.float32))

    def add(self, p: Projection) -> None:
        self.sum += p.color * p.weight[:, None]
        self.weight += p.weight
        np.maximum(self.coverage, p.facing, out=self.coverage)

    def texture(self, margin: int = 0) -> np.ndarray:
        """(S,S,3) float32: blended colour where some view saw the texel, the previous texture
        (or neutral) elsewhere, then `margin` texels of dilation around the UV islands."""
        s = self.texels.size
        out = self.base.reshape(s * s, 3).copy()
        seen = self.weight > 1e-8
        out[self.texels.index[seen]] = (self.sum[seen] / self.weight[seen, None])
        out = out.reshape(s, s, 3)
        return dilate(out, self.texels.valid, margin) if margin > 0 else out

    def coverage_map(self) -> np.ndarray:
        """(S,S) float32: best facing any view gave each texel (0 = never seen)."""
        s = self.texels.size
        cov = np.zeros(s * s, np.float32)
        cov[self.texels.index] = self.coverage
        return cov.reshape(s, s)

    def covered_fraction(self) -> float:
        return float((self.coverage > 0).mean()) if len(self.coverage) else 0.0


def render_texture(mesh: Mesh, view: View, raster: Raster, texture: np.ndarray,
                   coverage: np.ndarray, poor: float = POOR_FACING, background: float = NEUTRAL
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The texture-so-far seen from the view, and the inpainting mask.

    Returns (image (H,W,3) uint8, mask (H,W) uint8): mask is 255 on the object's pixels whose
    texel is still empty or only seen at a poor angle (coverage < poor), 0 elsewhere
    (background included: there is nothing to paint there)."""
    h, w = raster.tri.shape
    size = texture.shape[0]
    idx = np.flatnonzero(raster.tri.reshape(-1) >= 0)
    uv = interpolate(raster, mesh.uvs, idx) * size
    tu, tv = uv[:, 0], uv[:, 1]
    # texture rows are bottom-up (row 0 = v 0): sample at (u*S, v*S) in that grid directly
    color = _sample(np.asarray(texture, np.float32), tu, tv)[:, :3]
    cov = _nearest(np.asarray(coverage, np.float32), tu, tv)
    img = np.full((h * w, 3), background, np.float32)
    img[idx] = color
    mask = np.zeros(h * w, np.uint8)
    mask[idx] = np.where(cov < poor, 255, 0)
    image = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8).reshape(h, w, 3)
    return image, mask.reshape(h, w)


def _nearest(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    return a[np.clip(y.astype(np.int64), 0, h - 1), np.clip(x.astype(np.int64), 0, w - 1)]


def dilate(texture: np.ndarray, valid: np.ndarray, margin: int) -> np.ndarray:
    """Grow the islands' colours `margin` texels into the empty UV space (mean of the filled
    4-neighbours, ring by ring), so bilinear filtering and mipmaps do not pull in the gaps."""
    out = np.array(texture, np.float32, copy=True)
    filled = np.array(valid, bool, copy=True)
    for _ in range(margin):
        if filled.all():
            break
        acc = np.zeros_like(out)
        cnt = np.zeros(filled.shape, np.float32)
        for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
            f = np.roll(filled, shift, axis)
            c = np.roll(out, shift, axis)
            # no wrap-around at the texture's borders
            if axis == 0:
                edge = (slice(0, 1) if shift == 1 else slice(-1, None), slice(None))
            else:
                edge = (slice(None), slice(0, 1) if shift == 1 else slice(-1, None))
            f[edge] = False
            acc += c * f[..., None]
            cnt += f
        grow = ~filled & (cnt > 0)
        if not grow.any():
            break
        out[grow] = acc[grow] / cnt[grow][:, None]
        filled |= grow
    return out


def margin_for(size: int) -> int:
    """UV margin dilation in texels for a texture size (16 at 1024, at least 4)."""
    return max(4, size // 64)


def fill_margins(texture: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill every texel outside the UV islands from the islands around it (pull-push: average
    the filled texels down a mip pyramid, then fill the gaps back up from coarser levels), so
    no seam shows however far a renderer's filtering reaches. Texels inside stay as they are."""
    tex = np.asarray(texture, np.float32)
    w = np.asarray(valid, np.float32)
    if w.all() or not w.any():
        return tex.copy()
    levels = [(tex * w[..., None], w)]
    while max(levels[-1][1].shape) > 1:
        c, m = levels[-1]
        h, wd = m.shape
        if h % 2 or wd % 2:                       # pad to even (no weight in the padding)
            c = np.pad(c, ((0, h % 2), (0, wd % 2), (0, 0)))
            m = np.pad(m, ((0, h % 2), (0, wd % 2)))
        c2 = c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]
        m2 = m[0::2, 0::2] + m[1::2, 0::2] + m[0::2, 1::2] + m[1::2, 1::2]
        levels.append((c2, m2))
    colour = levels[-1][0] / np.maximum(levels[-1][1], 1e-12)[..., None]
    for c, m in reversed(levels[:-1]):          # in place: each level's sums become colours
        filled = m > 0
        c[filled] /= m[filled][:, None]
        hy, hx = np.nonzero(~filled)
        c[hy, hx] = colour[hy // 2, hx // 2]
        colour = c
    out = colour
    out[valid] = tex[valid]                     # exactly as they were
    return out
