"""The requests of a projection run, and its view plan. No bpy, no numpy.

View 1 asks for an image with depth control when the engine has a ControlNet for depth, else
image-to-image from the shaded capture. Each later view is an inpainting job whose input image
is the texture built so far rendered from that view and whose mask is white where that texture
is still empty or poorly covered; with depth control when the engine has it. All views share
the prompt (plus optional per-view words) and the seed, so they agree in style.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import requests as rq

# A run's own steps (blender/project.py Run.phase) while it works. They are not job states: a
# run sends one engine job per view (each a JobBoard job with a JobState) and does numpy work
# between them. A run ends like a job, in a terminal JobState (SUCCEEDED, FAILED, CANCELLED).
PREPARING, GENERATING, ABSORBING, FINISHING = "preparing", "generating", "absorbing", "finishing"

VIEW_WORDS_AROUND = ("front view", "right side view", "back view", "left side view")
VIEW_WORDS_ABOVE = "top view"
MAX_VIEWS = 16


@dataclass(frozen=True)
class ProjectionSettings:
    prompt: str
    width: int = 1024                # the image each view asks for
    height: int = 1024
    steps: int = 8
    seed: int = 0
    strength: float = 0.6           # img2img from the shaded capture (no ControlNet)
    control_scale: float = 0.75
    use_depth: bool = True           # depth control when the engine has it
    view_words: bool = True          # add "front view", "back view", ... per view


def view_words(count_around: int, above: bool) -> list[str]:
    """The words added to the prompt for each generated view (around first, then above)."""
    words = []
    for k in range(count_around):
        if count_around == 4:
            words.append(VIEW_WORDS_AROUND[k])
        else:
            words.append(VIEW_WORDS_AROUND[round(4 * k / max(1, count_around)) % 4])
    if above:
        words.append(VIEW_WORDS_ABOVE)
    return words


def direction_words(dx: float, dy: float, dz: float) -> str:
    """Words for a camera looking at the selection from the direction (dx, dy, dz) (camera
    minus centre; Blender's front is -Y): "front view", "right side view", "top view", ..."""
    horizontal = (dx * dx + dy * dy) ** 0.5
    if abs(dz) > horizontal:
        return VIEW_WORDS_ABOVE if dz > 0 else "bottom view"
    if abs(dy) >= abs(dx):
        return VIEW_WORDS_AROUND[0] if dy < 0 else VIEW_WORDS_AROUND[2]
    return VIEW_WORDS_AROUND[1] if dx > 0 else VIEW_WORDS_AROUND[3]


def mode_for(caps: set[str], use_depth: bool, first: bool) -> str:
    """'depth' | 'img2img' for the first view; 'inpaint_depth' | 'inpaint' for later ones.
    Raises RequestError when the engine can do neither."""
    depth = use_depth and rq.can_depth(caps)
    if first:
        if depth:
            return "depth"
        if rq.can_img2img(caps):
            return "img2img"
        raise rq.RequestError("capability_unavailable", "depth control or image-to-image")
    if "inpaint" not in caps:
        raise rq.RequestError("capability_unavailable", "inpainting (needed for later views)")
    return "inpaint_depth" if depth else "inpaint"


def view_request(s: ProjectionSettings, limits: rq.EngineLimits, caps: set[str], *,
                 first: bool, words: str = "", depth_png: bytes | None = None,
                 init_png: bytes | None = None, mask_png: bytes | None = None) -> rq.Request:
    """One view's submit. Checked against the engine's limits and capabilities first."""
    prompt = s.prompt.strip()
    if not prompt:
        raise rq.RequestError("invalid_params", "the prompt is empty")
    problem = rq.size_problem(s.width, s.height, limits)
    if problem:
        raise rq.RequestError("unsupported_size", problem)
    if not 1 <= s.steps <= limits.max_steps:
        raise rq.RequestError("invalid_params", f"steps must be 1 to {limits.max_steps}")
    mode = mode_for(caps, s.use_depth, first)
    if s.view_words and words:
        prompt = f"{prompt}, {words}"
    params = {"prompt": prompt, "width": s.width, "height": s.height, "steps": int(s.steps),
              "seed": int(s.seed), "num_images": 1}
    blobs: dict[str, bytes] = {}
    if mode in ("depth", "inpaint_depth"):
        if not depth_png:
            raise rq.RequestError("capture_failed", "no depth capture")
        blobs["control_image"] = depth_png
        params.update(control_image="control_image", control_type="depth",
                      control_scale=round(float(s.control_scale), 4))
    if mode == "img2img":
        if not init_png:
            raise rq.RequestError("capture_failed", "no shaded capture")
        blobs["init_image"] = init_png
        params.update(init_image="init_image", strength=round(float(s.strength), 4))
    if mode.startswith("inpaint"):
        if not (init_png and mask_png):
            raise rq.RequestError("capture_failed", "no texture-so-far render or mask")
        blobs["init_image"] = init_png
        blobs["mask"] = mask_png
        params.update(init_image="init_image", mask="mask", strength=1.0)
    return rq.Request(params, blobs)


def run_summary(textured: list[str], created_uv: list[str], shared: dict[str, list[str]],
                skipped: list[str], covered: float, views: int, linked: list[str] = (),
                lost: list[str] = ()) -> str:
    """The report line of a finished run."""
    parts = [f"Textured {', '.join(textured)} from {views} view{'s' if views != 1 else ''} "
             f"({covered:.0%} of the surface covered)"]
    if created_uv:
        parts.append(f"new UV map (Smart UV Project) on {', '.join(created_uv)}")
    for owner, others in shared.items():
        parts.append(f"{', '.join(others)} share{'s' if len(others) == 1 else ''} "
                     f"{owner}'s mesh and texture")
    if skipped:
        parts.append(f"skipped (not meshes): {', '.join(skipped)}")
    if linked:
        parts.append(f"skipped (linked from a library): {', '.join(linked)}")
    if lost:
        parts.append(f"not applied: {', '.join(lost)}")
    return "; ".join(parts)


def split_selection(objects: list[tuple[str, str, str]]) -> tuple[list[str], dict[str, list[str]],
                                                                   list[str]]:
    """objects: (name, type, mesh data name). Returns (targets, shared, skipped): one target
    per mesh (linked duplicates share one texture; the first selected object stands for
    them), {target: [its linked duplicates]}, and the names of non-mesh objects."""
    targets: list[str] = []
    by_mesh: dict[str, str] = {}
    shared: dict[str, list[str]] = {}
    skipped: list[str] = []
    for name, kind, data in objects:
        if kind != "MESH":
            skipped.append(name)
            continue
        if data in by_mesh:
            shared.setdefault(by_mesh[data], []).append(name)
            continue
        by_mesh[data] = name
        targets.append(name)
    return targets, shared, skipped
