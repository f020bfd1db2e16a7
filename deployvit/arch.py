"""`Arch`: the one architecture description every stage reads and writes (docs/DESIGN.md section 3).

An Arch is canonical: a stage of depth d has exactly d layer entries, so two encodings that compute
the same network are equal (the many-to-one problem of ViTAS, docs/REFERENCES.md section 7). Single-stage
(AutoFormer) archs serialise with top-level `embed_dim`/`depth`/`layers`; multi-stage (ViT-ResNAS)
archs with a `stages` list. Parsing is strict: unknown keys and wrong types are errors that name the
field, so a typo in a hand-edited file never silently becomes a default.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from deployvit import io
from deployvit.errors import DeployvitError

ARCH_FORMAT = "deployvit.arch/1"
DEFAULT_HEAD_DIM = 64  # AutoFormer: q, k and v are each 64 x num_heads wide
DEFAULT_NORM_EPS = 1e-6  # timm's ViT/DeiT LayerNorm (AutoFormer's released supernets use torch's 1e-5)
POOLS = ("token", "avg")  # the classifier reads the class token (DeiT), or the mean of the patch tokens (AutoFormer's gp)
ARCH_MAX_BYTES = 1 << 20  # a 256-layer arch is ~15 kB


class ArchError(DeployvitError):
    """An architecture that is malformed or outside its space."""


#: Sane ranges of every structural field, one place for archs and spaces alike. They are far beyond
#: any published ViT (DeiT-B: 768 wide, 12 deep, 12 heads at 224 / 16) and exist so that a typo or a
#: hostile file (a 10,000-layer arch, a 10^6-pixel image) is refused before a model, a FLOP count or
#: a latency prediction is built from it.
LIMITS: dict[str, tuple[float, float]] = {
    "img_size": (1, 4096),
    "patch_size": (1, 1024),
    "in_chans": (1, 64),
    "num_classes": (1, 100_000),
    "embed_dim": (1, 16_384),
    "head_dim": (1, 1024),
    "num_heads": (1, 1024),
    "depth": (1, 256),  # per stage
    "mlp_ratio": (0, 64),  # exclusive of 0
    "stages": (1, 8),
    "rel_pos": (0, 256),  # max relative distance in patches of 2-D relative position encoding; 0: none
}
MAX_TOKENS = 65_537  # a 256 x 256 patch grid plus the class token: attention is quadratic in it


@dataclass(frozen=True)
class Features:
    """Model-wide features of an arch beyond the ViT of the presets (DeiT's: class-token classifier,
    LayerNorm eps 1e-6, absolute position embedding only). Imported parents need them to compute
    the function they were trained as: AutoFormer's released supernets add 2-D relative position
    encoding of keys and values (`rel_pos`: the largest distance, 14), classify the mean of the patch
    tokens (`pool="avg"`) and normalise with torch's LayerNorm eps 1e-5. They hold for every block of
    a space, so they live on the space and the arch, not per layer; an arch with the defaults
    serialises exactly as before they existed (its key and its space's hash are unchanged)."""

    rel_pos: int = 0
    pool: str = "token"
    norm_eps: float = DEFAULT_NORM_EPS

    def to_dict(self) -> dict[str, Any]:
        """The non-default features only (empty for the presets' ViT)."""
        default = Features()
        return {k: getattr(self, k) for k in ("rel_pos", "pool", "norm_eps") if getattr(self, k) != getattr(default, k)}

    def describe(self) -> str:
        """'' for the defaults, else e.g. 'rel-pos 14, avg pool, eps 1e-05'."""
        parts = []
        if self.rel_pos:
            parts.append(f"rel-pos {self.rel_pos}")
        if self.pool != "token":
            parts.append(f"{self.pool} pool")
        if self.norm_eps != DEFAULT_NORM_EPS:
            parts.append(f"eps {self.norm_eps:g}")
        return ", ".join(parts)


def parse_features(data: Any, where: str = "features") -> Features:
    """Strict parse of a `features` mapping (arch files and space files share it)."""
    data = _require_dict(data, where)
    _check_keys(data, {"rel_pos", "pool", "norm_eps"}, set(), where)
    rel_pos = _int(data.get("rel_pos", 0), f"{where}.rel_pos", "rel_pos")
    pool = data.get("pool", "token")
    if pool not in POOLS:
        raise ArchError(f"{where}.pool: expected one of {', '.join(POOLS)}, got {_shown(pool)}")
    eps = data.get("norm_eps", DEFAULT_NORM_EPS)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ArchError(f"{where}.norm_eps: expected a number in (0, 1), got {_shown(eps)}")
    return Features(rel_pos, pool, float(eps))


@dataclass(frozen=True)
class Layer:
    """Per-layer choices of one transformer block."""

    num_heads: int
    mlp_ratio: float


@dataclass(frozen=True)
class Stage:
    """A run of blocks at one token resolution and width."""

    embed_dim: int
    head_dim: int
    layers: tuple[Layer, ...]

    @property
    def depth(self) -> int:
        return len(self.layers)


def stage_grid(img_size: int, patch_size: int, stage: int) -> int:
    """Token grid side of a stage: the patch grid, halved by each residual spatial reduction before it."""
    return (img_size // patch_size) >> stage


def stage_tokens(img_size: int, patch_size: int, stage: int) -> int:
    """Tokens a block of a stage sees: its grid plus the class token."""
    return stage_grid(img_size, patch_size, stage) ** 2 + 1


def mlp_hidden(embed_dim: int, mlp_ratio: float) -> int:
    """MLP hidden width; the one rounding rule shared by models, counting and latency keys."""
    return int(round(embed_dim * mlp_ratio))


@dataclass(frozen=True)
class Arch:
    space: str
    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    stages: tuple[Stage, ...]
    features: Features = Features()

    @property
    def multi_stage(self) -> bool:
        return len(self.stages) > 1

    @property
    def depth(self) -> int:
        return sum(s.depth for s in self.stages)

    @property
    def embed_dim(self) -> int:
        """Embedding width of a single-stage arch (the last stage's for a multi-stage one)."""
        return self.stages[-1].embed_dim

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(layer for s in self.stages for layer in s.layers)

    @cached_property
    def key(self) -> str:
        """Canonical compact string, equal iff the archs are equal: the cache key of every stage."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        head = {
            "format": ARCH_FORMAT,
            "space": self.space,
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
        }
        features = {"features": self.features.to_dict()} if self.features.to_dict() else {}
        if not self.multi_stage:
            (stage,) = self.stages
            return {**head, **_stage_to_dict(stage), "depth": stage.depth, **features}
        return {**head, "stages": [_stage_to_dict(s) for s in self.stages], **features}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Write the arch; `metadata` (e.g. where its predicted latency came from) rides along under
        `"metadata"` and is not part of the arch: reading the file back ignores it."""
        data = self.to_dict() if metadata is None else {**self.to_dict(), "metadata": metadata}
        io.write_text(path, json.dumps(data, indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: Any) -> "Arch":
        return _parse_arch(data)

    def summary(self) -> str:
        """One human line: widths, depths and per-layer choices, comma-separated per layer (two-digit
        head counts stay readable: `heads [12,10,12]`)."""
        parts = []
        for s in self.stages:
            heads = ",".join(str(l.num_heads) for l in s.layers)
            ratios = ",".join(f"{l.mlp_ratio:g}" for l in s.layers)
            parts.append(f"embed {s.embed_dim} depth {s.depth} heads [{heads}] mlp [{ratios}]")
        if self.features.describe():
            parts.append(self.features.describe())
        return " | ".join(parts)


def _stage_to_dict(stage: Stage) -> dict[str, Any]:
    return {
        "embed_dim": stage.embed_dim,
        "head_dim": stage.head_dim,
        "layers": [{"num_heads": l.num_heads, "mlp_ratio": l.mlp_ratio} for l in stage.layers],
    }


def load_arch(path: str | os.PathLike) -> Arch:
    """Read an arch JSON file; every problem is a one-line ArchError/DeployvitError."""
    data = io.read_json(path, what="arch file", max_bytes=ARCH_MAX_BYTES)
    try:
        return _parse_arch(data)
    except ArchError as exc:
        raise io.in_file(path, exc) from None


# --- strict parsing --------------------------------------------------------------------------------

_TOP_KEYS = {"format", "space", "img_size", "patch_size", "in_chans", "num_classes", "metadata", "features"}
_SINGLE_KEYS = {"embed_dim", "depth", "layers", "head_dim"}
_STAGE_KEYS = {"embed_dim", "layers", "head_dim", "depth"}
_LAYER_KEYS = {"num_heads", "mlp_ratio"}


def _require_dict(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ArchError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _check_keys(data: dict, allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ArchError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(data))
    if missing:
        raise ArchError(f"{where}: missing key {missing[0]!r}")


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: Any, where: str, field: str | None = None) -> int:
    """An integer within LIMITS[field] (field: the last name in `where` by default)."""
    lo, hi = LIMITS[field or where.rsplit(".", 1)[-1]]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchError(f"{where}: expected an integer, got {_shown(value)}")
    if not lo <= value <= hi:
        raise ArchError(f"{where}: expected an integer in [{lo}, {hi}], got {_shown(value)}")
    return value


def _ratio(value: Any, where: str) -> float:
    lo, hi = LIMITS["mlp_ratio"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArchError(f"{where}: expected a number, got {_shown(value)}")
    if not lo < value <= hi:
        raise ArchError(f"{where}: expected a number in ({lo}, {hi}], got {_shown(value)}")
    return float(value)


def check_geometry(img_size: int, patch_size: int, stages: int) -> None:
    """img_size a multiple of patch_size, a grid that halves between stages, and a token count
    attention can afford; shared by archs and spaces."""
    if img_size % patch_size:
        raise ArchError(f"img_size: {img_size} is not a multiple of patch_size {patch_size}")
    grid = img_size // patch_size
    if grid % (1 << (stages - 1)):
        raise ArchError(
            f"img_size: a {grid}x{grid} patch grid cannot be halved {stages - 1} times "
            f"(img_size / patch_size must be divisible by {1 << (stages - 1)})"
        )
    if grid * grid + 1 > MAX_TOKENS:
        raise ArchError(f"img_size: {img_size} / patch_size {patch_size} gives {grid * grid + 1:,} tokens; expected at most {MAX_TOKENS:,}")


def _parse_stage(data: Any, where: str, default_head_dim: int) -> Stage:
    data = _require_dict(data, where)
    _check_keys(data, _STAGE_KEYS, {"embed_dim", "layers"}, where)
    embed_dim = _int(data["embed_dim"], _join(where, "embed_dim"))
    head_dim = _int(data.get("head_dim", default_head_dim), _join(where, "head_dim"))
    raw_layers = data["layers"]
    max_depth = int(LIMITS["depth"][1])
    if not isinstance(raw_layers, list) or not raw_layers or len(raw_layers) > max_depth:
        got = f"{len(raw_layers)} layers" if isinstance(raw_layers, list) else _shown(raw_layers)
        raise ArchError(f"{_join(where, 'layers')}: expected a non-empty list of at most {max_depth} layers, got {got}")
    layers = []
    for i, raw in enumerate(raw_layers):
        lw = _join(where, f"layers[{i}]")
        raw = _require_dict(raw, lw)
        _check_keys(raw, _LAYER_KEYS, _LAYER_KEYS, lw)
        layers.append(Layer(_int(raw["num_heads"], f"{lw}.num_heads"), _ratio(raw["mlp_ratio"], f"{lw}.mlp_ratio")))
    if "depth" in data:
        depth = _int(data["depth"], _join(where, "depth"))
        if depth != len(layers):
            raise ArchError(f"{_join(where, 'depth')}: depth is {depth} but {len(layers)} layers are listed")
    return Stage(embed_dim, head_dim, tuple(layers))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _parse_arch(data: Any) -> Arch:
    data = _require_dict(data, "arch")
    multi = "stages" in data
    allowed = _TOP_KEYS | ({"stages"} if multi else _SINGLE_KEYS)
    required = {"space", "img_size", "patch_size", "num_classes"} | (set() if multi else {"embed_dim", "layers"})
    _check_keys(data, allowed, required, "arch")
    if not isinstance(data.get("metadata", {}), dict):
        raise ArchError(f"metadata: expected an object, got {type(data['metadata']).__name__}")
    fmt = data.get("format", ARCH_FORMAT)
    if fmt != ARCH_FORMAT:
        raise ArchError(f"format: expected {ARCH_FORMAT!r}, got {_shown(fmt)}")
    if not isinstance(data["space"], str) or not data["space"]:
        raise ArchError(f"space: expected a space name, got {_shown(data['space'])}")
    if multi:
        raw_stages = data["stages"]
        max_stages = int(LIMITS["stages"][1])
        if not isinstance(raw_stages, list) or not 2 <= len(raw_stages) <= max_stages:
            raise ArchError(f"stages: expected a list of 2 to {max_stages} stages")
        stages = tuple(_parse_stage(s, f"stages[{i}]", DEFAULT_HEAD_DIM) for i, s in enumerate(raw_stages))
    else:
        single = {k: data[k] for k in _SINGLE_KEYS if k in data}
        stages = (_parse_stage(single, "", DEFAULT_HEAD_DIM),)
    arch = Arch(
        space=data["space"],
        img_size=_int(data["img_size"], "img_size"),
        patch_size=_int(data["patch_size"], "patch_size"),
        in_chans=_int(data.get("in_chans", 3), "in_chans"),
        num_classes=_int(data["num_classes"], "num_classes"),
        stages=stages,
        features=parse_features(data["features"]) if "features" in data else Features(),
    )
    check_geometry(arch.img_size, arch.patch_size, len(arch.stages))
    return arch
