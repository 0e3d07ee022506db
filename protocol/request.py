"""GenerateRequest: the typed form of a `submit`'s params (protocol v1). Stdlib only.

    req = GenerateRequest.from_params(params, blob_descs, limits)   # validated once
    header["params"] = req.to_params()                              # back to the wire

`from_params` runs the one validation of PROTOCOL.md §6 (protocol/messages.py
validate_params: bounds, multiples, seed range, choices, capability-free checks) and raises
ProtocolError naming the field. Image inputs (`init_image`, `mask`, `control_image`) are blob
names here; the engine decodes them and checks what needs the pixels.

Seeds are drawn in one place, random_seed(), so that seed + i for every image of a request
stays inside 0..MAX_SEED, or inside a host app's smaller seed field (`upper`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields
from typing import Any

from .messages import DEFAULT_LIMITS, MAX_SEED, TILE_MODES, Limits, validate_params

__all__ = ["GenerateRequest", "MAX_SEED", "TILE_MODES", "random_seed"]


def random_seed(num_images: int = 1, upper: int = MAX_SEED, rng=None) -> int:
    """A random seed such that seed + num_images - 1 <= upper (at most MAX_SEED): image i
    uses seed + i. The engine draws with the protocol's bound when a request has no seed; a
    host app that draws ahead (to show the seed before the result) passes the largest seed
    its own field holds, e.g. Blender's IntProperty 2**31 - 1. `rng` (a random.Random) makes
    the draw repeatable for tests; by default it comes from the system's generator."""
    span = min(int(upper), MAX_SEED) + 2 - max(1, int(num_images))
    if span < 1:
        raise ValueError(f"no seed for {num_images} images fits 0..{upper}")
    return rng.randrange(span) if rng is not None else secrets.randbelow(span)


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    width: int = 1024
    height: int = 1024
    steps: int = 8
    seed: int | None = None        # None: the engine draws one (random_seed) and reports it
    num_images: int = 1            # image i uses seed + i
    # Image inputs: a blob name on the wire; in the engine, the decoded image (HxWx3 uint8
    # numpy array; the mask HxW uint8, white = repaint).
    init_image: Any = field(default=None, compare=False)   # img2img / inpaint input
    strength: float | None = None  # 0..1; None: the engine's default
    mask: Any = field(default=None, compare=False)         # inpaint, with init_image
    control_image: Any = field(default=None, compare=False)
    control_type: str | None = None
    control_scale: float | None = None   # None: the engine's default
    tile: str | None = None        # "x" | "y" | "xy"
    loras: tuple[tuple[str, float], ...] = ()   # (name, weight): names from the welcome

    @classmethod
    def from_params(cls, params: Any, blob_descs: list[dict] | None = None,
                    limits: Limits = DEFAULT_LIMITS, path: str = "params") -> "GenerateRequest":
        return cls.from_clean(validate_params(params, blob_descs or [], limits, path))

    @classmethod
    def from_clean(cls, params: dict) -> "GenerateRequest":
        """From params that validate_request already checked (the engine's submit path)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in params.items() if k in names}
        if kw.get("loras"):
            kw["loras"] = tuple((d["name"], d["weight"]) for d in kw["loras"])
        return cls(**kw)

    def to_params(self) -> dict:
        """The wire form: fields left at None are omitted (seed is kept, null = random)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if getattr(self, f.name) is not None or f.name == "seed"}
        if self.loras:
            out["loras"] = [{"name": n, "weight": w} for n, w in self.loras]
        else:
            del out["loras"]
        return out

    def with_seed(self) -> "GenerateRequest":
        """This request with a concrete seed (drawn if it had none)."""
        if self.seed is not None:
            return self
        from dataclasses import replace
        return replace(self, seed=random_seed(self.num_images))
