"""History: every result keeps prompt, seed, size, steps and model.

The same record travels three ways: custom properties on the image datablock, the PNG text
chunk `parameters` (JSON {prompt, seed, steps, width, height, model} — the engine's CLI
writes the same), and an entry of the scene's history list (recall parameters, re-apply).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

PARAMETER_KEYS = ("prompt", "seed", "steps", "width", "height", "model")
PROP_PREFIX = "zimage_"          # custom properties on images: zimage_prompt, zimage_seed, ...
MAX_ENTRIES = 100


@dataclass
class Record:
    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    model: str = ""
    image_name: str = ""
    kind: str = "texture"            # texture | concept
    created: float = field(default_factory=time.time)
    loras: tuple = ()                # ((name, weight), ...) the engine applied

    def parameters(self) -> dict:
        out = {k: getattr(self, k) for k in PARAMETER_KEYS}
        if self.loras:               # as the engine CLI writes them
            out["loras"] = [{"name": n, "weight": w} for n, w in self.loras]
        return out

    def parameters_json(self) -> str:
        """The PNG `parameters` chunk: same keys and order as the engine CLI's."""
        return json.dumps(self.parameters(), ensure_ascii=False)

    def image_props(self) -> dict:
        """Custom properties for the image datablock."""
        out = {PROP_PREFIX + k: v for k, v in self.parameters().items() if k != "loras"}
        out[PROP_PREFIX + "kind"] = self.kind
        if self.loras:
            out[PROP_PREFIX + "loras"] = loras_json(self.loras)
        return out

    @classmethod
    def from_image_props(cls, props: dict, image_name: str = "") -> "Record | None":
        try:
            values = {k: props[PROP_PREFIX + k] for k in PARAMETER_KEYS}
            return cls(prompt=str(values["prompt"]), seed=int(values["seed"]),
                       steps=int(values["steps"]), width=int(values["width"]),
                       height=int(values["height"]), model=str(values["model"]),
                       image_name=image_name,
                       kind=str(props.get(PROP_PREFIX + "kind", "texture")),
                       loras=parse_loras(props.get(PROP_PREFIX + "loras")))
        except (KeyError, TypeError, ValueError):
            return None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_parameters(text: str | None) -> dict | None:
    """The `parameters` chunk back into a dict; None when absent or not ours."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not all(k in data for k in PARAMETER_KEYS):
        return None
    out = {k: data[k] for k in PARAMETER_KEYS}
    loras = parse_loras(data.get("loras"))
    if loras:
        out["loras"] = [{"name": n, "weight": w} for n, w in loras]
    return out


def loras_json(loras) -> str:
    return json.dumps([{"name": n, "weight": w} for n, w in loras], ensure_ascii=False)


def parse_loras(value) -> tuple:
    """[{name, weight}] (or its JSON) -> ((name, weight), ...); anything malformed is dropped."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value else []
        except ValueError:
            return ()
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(
                item.get("weight", 1.0), (int, float)) and not isinstance(item.get("weight"), bool):
            out.append((item["name"][:200], float(item.get("weight", 1.0))))
    return tuple(out)


def recall_settings(record: Record) -> dict:
    """What 'recall' writes back into the panel: the same result again (fixed seed)."""
    out = {"prompt": record.prompt, "width": record.width, "height": record.height,
           "steps": record.steps, "seed": record.seed, "seed_random": False}
    if record.loras:
        out["loras"] = tuple(record.loras)
    return out


def trim(count: int, limit: int = MAX_ENTRIES) -> int:
    """How many of the oldest entries to drop so that `count` fits the limit."""
    return max(0, count - limit)
