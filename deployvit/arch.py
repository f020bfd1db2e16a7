"""`Arch`: the one architecture description every stage reads and writes (DESIGN.md section 3).

An Arch is canonical: a stage of depth d has exactly d layer entries, so two encodings that compute
the same network are equal (the many-to-one problem of ViTAS, REFERENCES.md section 7). Single-stage
(AutoFormer) archs serialise with top-level `embed_dim`/`depth`/`layers`; multi-stage (ViT-ResNAS)
archs with a `stages` list. Parsing is strict: unknown keys and wrong types are errors that name the
field, so a typo in a hand-edited file never silently becomes a default.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from deployvit import io
from deployvit.errors import DeployvitError

ARCH_FORMAT = "deployvit.arch/1"
DEFAULT_HEAD_DIM = 64  # AutoFormer: q, k and v are each 64 x num_heads wide


class ArchError(DeployvitError):
    """An architecture that is malformed or outside its space."""


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
        if not self.multi_stage:
            (stage,) = self.stages
            return {**head, **_stage_to_dict(stage), "depth": stage.depth}
        return {**head, "stages": [_stage_to_dict(s) for s in self.stages]}

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
        """One human line: widths, depths and per-layer choices."""
        parts = []
        for s in self.stages:
            heads = "".join(str(l.num_heads) for l in s.layers)
            ratios = ",".join(f"{l.mlp_ratio:g}" for l in s.layers)
            parts.append(f"embed {s.embed_dim} depth {s.depth} heads {heads} mlp [{ratios}]")
        return " | ".join(parts)


def _stage_to_dict(stage: Stage) -> dict[str, Any]:
    return {
        "embed_dim": stage.embed_dim,
        "head_dim": stage.head_dim,
        "layers": [{"num_heads": l.num_heads, "mlp_ratio": l.mlp_ratio} for l in stage.layers],
    }


def load_arch(path: str | os.PathLike) -> Arch:
    """Read an arch JSON file; every problem is a one-line ArchError/DeployvitError."""
    data = io.read_json(path, what="arch file")
    try:
        return _parse_arch(data)
    except ArchError as exc:
        raise ArchError(f"{Path(path)}: {exc}") from None


# --- strict parsing --------------------------------------------------------------------------------

_TOP_KEYS = {"format", "space", "img_size", "patch_size", "in_chans", "num_classes", "metadata"}
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


def _int(value: Any, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchError(f"{where}: expected an integer, got {json.dumps(value)}")
    if value < minimum:
        raise ArchError(f"{where}: must be >= {minimum}, got {value}")
    return value


def _ratio(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArchError(f"{where}: expected a number, got {json.dumps(value)}")
    if not 0 < value < math.inf:
        raise ArchError(f"{where}: must be a finite number > 0, got {value}")
    return float(value)


def _parse_stage(data: Any, where: str, default_head_dim: int) -> Stage:
    data = _require_dict(data, where)
    _check_keys(data, _STAGE_KEYS, {"embed_dim", "layers"}, where)
    embed_dim = _int(data["embed_dim"], f"{where}.embed_dim" if where else "embed_dim")
    head_dim = _int(data.get("head_dim", default_head_dim), _join(where, "head_dim"))
    raw_layers = data["layers"]
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ArchError(f"{_join(where, 'layers')}: expected a non-empty list of layers")
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
        raise ArchError(f"format: expected {ARCH_FORMAT!r}, got {fmt!r}")
    if not isinstance(data["space"], str) or not data["space"]:
        raise ArchError(f"space: expected a space name, got {json.dumps(data['space'])}")
    if multi:
        raw_stages = data["stages"]
        if not isinstance(raw_stages, list) or len(raw_stages) < 2:
            raise ArchError("stages: expected a list of at least 2 stages")
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
    )
    if arch.img_size % arch.patch_size:
        raise ArchError(f"img_size: {arch.img_size} is not a multiple of patch_size {arch.patch_size}")
    return arch
