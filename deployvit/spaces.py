"""Search spaces as data: presets (docs/REFERENCES.md sections 1 and 4), tiny CI spaces, and user files.

A space is a list of stages; each stage lists its choices (embed dims, depths, heads, MLP ratios) and
its fixed head dim. One stage is an AutoFormer space, three with halving token grids a ViT-ResNAS
space. Everything search and training need from a space (sampling, mutation, crossover, membership,
size, extremes, the choice-index encoding) lives here so no other module re-derives the choices.

The choices are data (ModelOpt's configurable hparams, Once-for-All's per-family encoding): `AXES`
names each kind of choice, `SearchSpace.decisions()` lists every choice an arch of the space makes,
and sampling, mutation, crossover, size, membership and `encode` are written over those, as are the
search's predictor and surrogate, the FocusFormer policy and the training samplers. A new kind of
choice is a row of `AXES`, its `StageSpace` field (and file key) and its `Stage`/`Layer` field in
`deployvit.arch`; the operations above pick it up unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deployvit import io
from deployvit.arch import (
    DEFAULT_HEAD_DIM, LIMITS, Arch, ArchError, Features, Layer, Stage, check_geometry, mlp_hidden, parse_features, stage_grid,
    stage_tokens,
)
from deployvit.errors import DeployvitError


MAX_RESIZE = 4  # an arch may run at up to 4x its space's image size


@dataclass(frozen=True)
class StageSpace:
    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    head_dim: int = 64

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @property
    def max_embed_dim(self) -> int:
        return max(self.embed_dims)

    @property
    def max_mlp_hidden(self) -> int:
        return max(mlp_hidden(e, r) for e in self.embed_dims for r in self.mlp_ratios)

    def choices(self, axis: Axis) -> tuple:
        """The values this stage allows on `axis`."""
        return tuple(getattr(self, axis.field))

    def to_dict(self) -> dict[str, Any]:
        return {
            "embed_dim": list(self.embed_dims),
            "depth": list(self.depths),
            "num_heads": list(self.num_heads),
            "mlp_ratio": list(self.mlp_ratios),
            "head_dim": self.head_dim,
        }


def _pick(values: Sequence, rng: np.random.Generator):
    return values[int(rng.integers(len(values)))]


@dataclass(frozen=True)
class Axis:
    """One kind of choice of a stage: `name` is the `Stage` or `Layer` field it sets (and its key in a
    space file), `field` the `StageSpace` field that lists its values, `per_layer` whether every layer
    chooses its own value (else the stage chooses one)."""

    name: str
    field: str
    per_layer: bool


#: Every kind of choice, in the order of `SearchSpace.decisions()` (the FocusFormer policy's logits are
#: laid out in it, so saved policies depend on it: append new axes, never reorder). `depth` is the one
#: structural axis: it decides how many layers choose their per-layer values.
AXES = (
    Axis("embed_dim", "embed_dims", per_layer=False),
    Axis("depth", "depths", per_layer=False),
    Axis("num_heads", "num_heads", per_layer=True),
    Axis("mlp_ratio", "mlp_ratios", per_layer=True),
)


@dataclass(frozen=True)
class Decision:
    """One choice an arch of a space makes: axis `kind` of stage `stage`, for layer position `layer`
    (-1: a choice of the stage itself), among `choices` (sorted)."""

    stage: int
    kind: str
    layer: int
    choices: tuple


@dataclass(frozen=True)
class _StageDecisions:
    """A stage's decisions grouped the way the operations walk them."""

    own: tuple[Decision, ...]  # the stage's own choices, in AXES order (embed dim, depth)
    depth: Decision  # the one of them that decides how many layers there are
    others: tuple[Decision, ...]  # the rest of them (embed dim)
    layers: tuple[tuple[Decision, ...], ...]  # per layer position up to the largest depth: that layer's choices


@dataclass(frozen=True)
class SearchSpace:
    name: str
    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    stages: tuple[StageSpace, ...]
    features: Features = Features()  # model-wide features every arch of the space has (imported parents)

    # --- geometry ---------------------------------------------------------------------------------

    @property
    def multi_stage(self) -> bool:
        return len(self.stages) > 1

    def grid(self, stage: int) -> int:
        return stage_grid(self.img_size, self.patch_size, stage)

    def tokens(self, stage: int) -> int:
        return stage_tokens(self.img_size, self.patch_size, stage)

    # --- (de)serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        features = {"features": self.features.to_dict()} if self.features.to_dict() else {}  # absent: hash as before
        return {
            "name": self.name,
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "stages": [s.to_dict() for s in self.stages],
            **features,
        }

    def hash(self) -> str:
        """Short content hash: a table or checkpoint records it to detect a changed space."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def with_overrides(self, img_size: int | None = None, num_classes: int | None = None) -> "SearchSpace":
        """Same choices at another resolution or label count (fine-tuning, tiny data sets, tests).

        The resolution may grow by at most MAX_RESIZE (fine-tuning a space of 224 at 384 is common;
        an arch at 32x the space's image size is a mistake that would build a huge model); a smaller
        one is cheap and is how tests and tiny data sets use the presets."""
        if img_size is not None and img_size > self.img_size * MAX_RESIZE:
            raise ArchError(
                f"img_size: {img_size} is far outside space {self.name!r} "
                f"(its img_size is {self.img_size}; expected at most {self.img_size * MAX_RESIZE})"
            )
        space = replace(
            self,
            img_size=self.img_size if img_size is None else img_size,
            num_classes=self.num_classes if num_classes is None else num_classes,
        )
        _check_geometry(space)
        return space

    # --- the choices as data ----------------------------------------------------------------------

    def decisions(self) -> tuple[Decision, ...]:
        """Every choice an arch of this space makes, as data: per stage its own choices (embed dim,
        depth), then per layer position up to the largest depth that layer's (heads, MLP ratio), in
        `AXES` order. A shallower arch leaves the decisions of its missing layers unused."""
        return self._decisions

    @cached_property
    def _decisions(self) -> tuple[Decision, ...]:
        return tuple(d for g in self._grouped for d in (*g.own, *(d for layer in g.layers for d in layer)))

    @cached_property
    def _grouped(self) -> tuple[_StageDecisions, ...]:
        groups = []
        for si, s in enumerate(self.stages):
            own = tuple(Decision(si, a.name, -1, s.choices(a)) for a in AXES if not a.per_layer)
            layers = tuple(tuple(Decision(si, a.name, li, s.choices(a)) for a in AXES if a.per_layer) for li in range(s.max_depth))
            (depth,) = (d for d in own if d.kind == "depth")
            groups.append(_StageDecisions(own, depth, tuple(d for d in own if d is not depth), layers))
        return tuple(groups)

    @cached_property
    def _columns(self) -> tuple[tuple[list, list], ...]:
        """Per stage, for `encode`: (column, field, value -> index) of its own decisions, and of each
        layer position's."""
        column = {(d.stage, d.kind, d.layer): i for i, d in enumerate(self.decisions())}

        def entry(d: Decision) -> tuple:
            return column[(d.stage, d.kind, d.layer)], d.kind, {v: i for i, v in enumerate(d.choices)}

        return tuple(([entry(d) for d in g.own], [[entry(d) for d in layer] for layer in g.layers]) for g in self._grouped)

    def encode(self, archs: Sequence[Arch]) -> np.ndarray:
        """[n, len(decisions())] int64: per arch and decision the index of its choice, -1 for the
        layer positions the arch does not have (the encoding the predictor and surrogate read)."""
        rows = []
        for arch in archs:
            row = [-1] * len(self.decisions())
            for stage, (own, layers) in zip(arch.stages, self._columns):
                for col, name, index in own:
                    row[col] = index[getattr(stage, name)]  # Stage.depth is its layer count
                for layer, entries in zip(stage.layers, layers):
                    for col, name, index in entries:
                        row[col] = index[getattr(layer, name)]
            rows.append(row)
        return np.array(rows, dtype=np.int64).reshape(len(rows), len(self.decisions()))

    def with_choices(self, choose: Callable[[int, Axis, tuple], tuple]) -> "SearchSpace":
        """The space with each stage's values on each axis replaced by `choose(stage, axis, values)`
        (e.g. only the largest widths: `train.samplers.unlocked_space`)."""
        stages = tuple(replace(s, **{a.field: tuple(choose(si, a, s.choices(a))) for a in AXES}) for si, s in enumerate(self.stages))
        return replace(self, stages=stages)

    # --- membership -----------------------------------------------------------------------------------

    def validate(self, arch: Arch) -> None:
        """Raise ArchError naming the first field of `arch` that is outside this space."""
        if arch.space != self.name:
            raise ArchError(f"space: arch belongs to space {arch.space!r}, not {self.name!r}")
        for field in ("img_size", "patch_size", "in_chans", "num_classes"):
            got, want = getattr(arch, field), getattr(self, field)
            if got != want:
                raise ArchError(f"{field}: {got} does not match space {self.name!r} ({want})")
        if len(arch.stages) != len(self.stages):
            raise ArchError(f"stages: arch has {len(arch.stages)} stages, space {self.name!r} has {len(self.stages)}")
        if arch.features != self.features:
            raise ArchError(f"features: {arch.features.to_dict()} do not match space {self.name!r} ({self.features.to_dict()})")
        for si, (stage, choices, g) in enumerate(zip(arch.stages, self.stages, self._grouped)):
            prefix = f"stages[{si}]." if self.multi_stage else ""
            for d in g.own:
                _check_choice(getattr(stage, d.kind), d.choices, f"{prefix}{d.kind}", self.name)
            if stage.head_dim != choices.head_dim:
                omitted = f" (an arch without head_dim means {DEFAULT_HEAD_DIM})" if stage.head_dim == DEFAULT_HEAD_DIM else ""
                raise ArchError(f"{prefix}head_dim: {stage.head_dim} does not match space {self.name!r} ({choices.head_dim}){omitted}")
            for li, (layer, decisions) in enumerate(zip(stage.layers, g.layers)):
                for d in decisions:
                    _check_choice(getattr(layer, d.kind), d.choices, f"{prefix}layers[{li}].{d.kind}", self.name)

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except ArchError:
            return False
        return True

    def size(self) -> int:
        """Number of distinct (canonical) archs: per stage (its own choices) * sum_d (one layer's choices)^d."""
        total = 1
        for g in self._grouped:
            per_layer = math.prod(len(d.choices) for d in g.layers[0]) if g.layers else 1
            total *= math.prod(len(d.choices) for d in g.others) * sum(per_layer**depth for depth in g.depth.choices)
        return total

    # --- construction ----------------------------------------------------------------------------------

    def make_arch(self, stages: Sequence[Stage]) -> Arch:
        return Arch(self.name, self.img_size, self.patch_size, self.in_chans, self.num_classes, tuple(stages), self.features)

    def compose(self, pick: Callable[[Decision], Any]) -> Arch:
        """The arch whose every decision is `pick(decision)`. Asked in a fixed order, the order of
        AutoFormer's sampling (so a seeded `sample` draws what it always drew): per stage the depth,
        then each existing layer's decisions, then the stage's other decisions."""
        stages = []
        for s, g in zip(self.stages, self._grouped):
            depth = pick(g.depth)
            layers = tuple(Layer(**{d.kind: pick(d) for d in g.layers[li]}) for li in range(depth))
            stages.append(Stage(head_dim=s.head_dim, layers=layers, **{d.kind: pick(d) for d in g.others}))
        return self.make_arch(stages)

    def max_arch(self) -> Arch:
        return self.compose(lambda d: max(d.choices))

    def min_arch(self) -> Arch:
        return self.compose(lambda d: min(d.choices))

    def sample(self, rng: np.random.Generator) -> Arch:
        """Uniform over each choice (AutoFormer's sampling), seeded by `rng`."""
        return self.compose(lambda d: _pick(d.choices, rng))

    def mutate(
        self, arch: Arch, rng: np.random.Generator, layer_prob: float = 0.2, stage_prob: float = 0.4
    ) -> Arch:
        """AutoFormer mutation: depth and the stage's other choices (embed dim) re-drawn with
        `stage_prob`, each layer's choices (heads, MLP ratio) with `layer_prob`; layers added by a
        deeper depth are drawn fresh."""

        def redraw(d: Decision, value, prob: float):
            return _pick(d.choices, rng) if rng.random() < prob else value

        stages = []
        for stage, s, g in zip(arch.stages, self.stages, self._grouped):
            depth = redraw(g.depth, stage.depth, stage_prob)
            own = {d.kind: redraw(d, getattr(stage, d.kind), stage_prob) for d in g.others}
            layers = []
            for i in range(depth):
                if i < stage.depth:
                    layers.append(Layer(**{d.kind: redraw(d, getattr(stage.layers[i], d.kind), layer_prob) for d in g.layers[i]}))
                else:
                    layers.append(Layer(**{d.kind: _pick(d.choices, rng) for d in g.layers[i]}))
            stages.append(Stage(head_dim=s.head_dim, layers=tuple(layers), **own))
        return self.make_arch(stages)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover that stays valid across depths (AutoFormer's can emit malformed archs):
        depth and each of the stage's other choices come from a random parent; layer i from a random
        parent among those that have a layer i, so a child deeper than one parent takes its tail from
        the deeper one."""
        stages = []
        for sa, sb, g in zip(a.stages, b.stages, self._grouped):
            depth = sa.depth if rng.random() < 0.5 else sb.depth
            own = {d.kind: getattr(sa, d.kind) if rng.random() < 0.5 else getattr(sb, d.kind) for d in g.others}
            layers = []
            for i in range(depth):
                owners = [s for s in (sa, sb) if i < s.depth]
                layers.append(owners[int(rng.integers(len(owners)))].layers[i])
            stages.append(Stage(head_dim=sa.head_dim, layers=tuple(layers), **own))
        return self.make_arch(stages)


def _check_choice(value, allowed: Sequence, field: str, space: str) -> None:
    """Exact membership: a near-equal ratio would give an equal arch a second key (search dedupes by key)."""
    if value not in allowed:
        shown = ", ".join(f"{a:g}" if isinstance(a, float) else str(a) for a in allowed)
        raise ArchError(f"{field}: {value!r} is not in space {space!r} (allowed: {shown})")


# --- presets ---------------------------------------------------------------------------------------


def _autoformer(name: str, embed: tuple, depth: tuple, heads: tuple) -> SearchSpace:
    stage = StageSpace(embed, depth, heads, (3.0, 3.5, 4.0), head_dim=64)
    return SearchSpace(name, 224, 16, 3, 1000, (stage,))


_RESNAS_RATIOS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # 7 MLP widths per stage


def _vit_family(name: str, patch: int, head_dim: int, embed: tuple, depth: tuple, heads: tuple) -> SearchSpace:
    """A space around published plain ViTs (one stage, MLP ratios {3, 3.5, 4} as AutoFormer's)."""
    stage = StageSpace(embed, depth, heads, (3.0, 3.5, 4.0), head_dim=head_dim)
    return SearchSpace(name, 224, patch, 3, 1000, (stage,))


#: The ViT families, smallest first: together their estimated latencies reach from below DeiT-Tiny's
#: to above ViT-H/14's on every catalogue GPU (TensorRT and CUDA graphs, fp16, batch 1 and 64), each
#: spanning well over 1.5x, neighbours overlapping by over 20% (`benchmarks/family_spans.py` checks it).
#: Each is centred on published models (ViT: Dosovitskiy et al. 2021, Table 1; DeiT: Touvron et al.
#: 2021, Table 1; timm's vit_*/deit_* configs), which are members (`reference_archs`). Head dim is
#: the published one (64; ViT-H/14: 16 heads x 80 = 1280). Widths step by 16-64 and depths reach well
#: below the published ones: at batch 1 a fast GPU's latency is mostly a cost per layer, so depth is
#: what moves it there; at batch 64 width is. `search --space auto` picks among these.
FAMILIES = ("vit-tiny", "vit-small", "vit-base", "vit-large", "vit-huge")

#: Where each preset's choices come from, and the published models that are its members.
PRESET_SOURCES = {
    "autoformer-tiny": "AutoFormer-T space (Chen et al. 2021; docs/REFERENCES.md section 1); members: DeiT-Ti, AutoFormer-T",
    "autoformer-small": "AutoFormer-S space (Chen et al. 2021); members: DeiT-S, AutoFormer-S",
    "autoformer-base": "AutoFormer-B space (Chen et al. 2021); members: AutoFormer-B",
    "resnas-small": "ViT-ResNAS small space (Liao et al. 2021; docs/REFERENCES.md section 4)",
    "vit-tiny": "around ViT-Ti/16 = DeiT-Ti (192 wide, 12 deep, 3 heads; DeiT, timm vit_tiny_patch16_224); members: DeiT-Ti",
    "vit-small": "around ViT-S/16 = DeiT-S (384, 12, 6 heads; DeiT, timm vit_small_patch16_224); members: DeiT-S",
    "vit-base": "around ViT-B/16 = DeiT-B (768, 12, 12 heads; ViT, DeiT, timm vit_base_patch16_224); members: DeiT-B",
    "vit-large": "around ViT-L/16 (1024, 24, 16 heads; ViT Table 1, DeiT III-L, timm vit_large_patch16_224); members: ViT-L/16",
    "vit-huge": "around ViT-H/14 (1280, 32, 16 heads x 80, patch 14; ViT Table 1, DeiT III-H, timm vit_huge_patch14_224); members: ViT-H/14",
    "test": "tiny CI space (32 px, 10 classes)",
    "test-resnas": "tiny three-stage CI space (32 px, 10 classes)",
}

PRESETS: dict[str, SearchSpace] = {
    space.name: space
    for space in (
        # docs/REFERENCES.md section 1 (tiny ratios {3, 3.5, 4}, base heads {8, 9, 10}: published subnets are members)
        _autoformer("autoformer-tiny", (192, 216, 240), (12, 13, 14), (3, 4)),
        _autoformer("autoformer-small", (320, 384, 448), (12, 13, 14), (5, 6, 7)),
        _autoformer("autoformer-base", (528, 576, 624), (14, 15, 16), (8, 9, 10)),
        # docs/REFERENCES.md section 4: patch 14 at 224 -> 16x16, 8x8, 4x4 tokens; widths x1, x2, x4;
        # attention widths 160-256 at head dim 32, then head dims 48 and 64; 7 blocks, 3 skippable.
        SearchSpace(
            "resnas-small", 224, 14, 3, 1000,
            (
                StageSpace((200, 220, 240, 280, 320), (4, 5, 6, 7), (5, 6, 7, 8), _RESNAS_RATIOS, head_dim=32),
                StageSpace((400, 440, 480, 560, 640), (4, 5, 6, 7), (5, 6, 7, 8), _RESNAS_RATIOS, head_dim=48),
                StageSpace((800, 880, 960, 1120, 1280), (4, 5, 6, 7), (5, 6, 7, 8), _RESNAS_RATIOS, head_dim=64),
            ),
        ),
        # The ViT families (FAMILIES above): published model in the middle of each, 224 px.
        _vit_family("vit-tiny", 16, 64, (160, 176, 192, 208, 224, 240), tuple(range(8, 15)), (2, 3, 4)),
        _vit_family("vit-small", 16, 64, (288, 320, 352, 384, 416, 448), tuple(range(8, 15)), (4, 5, 6, 7)),
        _vit_family("vit-base", 16, 64, (512, 576, 640, 704, 768, 832), tuple(range(8, 17)), (9, 10, 11, 12, 13)),
        _vit_family("vit-large", 16, 64, (832, 896, 960, 1024, 1088, 1152), tuple(range(12, 29, 2)), (14, 16, 18)),
        _vit_family("vit-huge", 14, 80, (1024, 1088, 1152, 1216, 1280, 1344), tuple(range(20, 37, 2)), (12, 14, 16, 18)),
        # Tiny spaces for CI and demos (32x32 images, 10 classes: the built-in digits data set).
        SearchSpace("test", 32, 8, 3, 10, (StageSpace((32, 48, 64), (2, 3, 4), (1, 2), (2.0, 3.0, 4.0), head_dim=16),)),
        SearchSpace(
            "test-resnas", 32, 4, 3, 10,
            (
                StageSpace((16, 24), (1, 2), (1, 2), (2.0, 4.0), head_dim=8),
                StageSpace((32, 48), (1, 2), (1, 2), (2.0, 4.0), head_dim=16),
                StageSpace((64, 96), (1, 2), (1, 2), (2.0, 4.0), head_dim=32),
            ),
        ),
    )
}


# Uniform (every layer alike) published models: (embed, depth, heads, mlp ratio, head dim, patch);
# each is a baseline wherever it is a member of a space. ViT-Ti/16, ViT-S/16 and ViT-B/16 have
# DeiT-Ti/S/B's dims; DeiT III-L/16 and -H/14 have ViT-L/16's and ViT-H/14's.
_REFERENCE_MODELS = {
    "DeiT-Ti": (192, 12, 3, 4.0, 64, 16),
    "DeiT-S": (384, 12, 6, 4.0, 64, 16),
    "DeiT-B": (768, 12, 12, 4.0, 64, 16),
    "ViT-L/16": (1024, 24, 16, 4.0, 64, 16),
    "ViT-H/14": (1280, 32, 16, 4.0, 80, 14),
}


def reference_archs(space: SearchSpace) -> dict[str, Arch]:
    """Published models that are members of `space` (DeiT-Ti lies in autoformer-tiny and vit-tiny,
    ViT-H/14 in vit-huge): the baselines marked on search plots. The patch size must match; the image
    size need not (a space at another resolution keeps its members)."""
    found = {}
    if space.multi_stage:
        return found
    for name, (embed, depth, heads, ratio, head_dim, patch) in _REFERENCE_MODELS.items():
        if patch != space.patch_size:
            continue
        arch = space.make_arch([Stage(embed, head_dim, tuple(Layer(heads, ratio) for _ in range(depth)))])
        if space.contains(arch):
            found[name] = arch
    return found


def get_space(name_or_path: str | os.PathLike) -> SearchSpace:
    """A preset by name, or a user space from a YAML/JSON file."""
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        return load_space(path)
    raise DeployvitError(f"unknown space {key!r} (presets: {', '.join(PRESETS)}; or a .yaml/.json file)")


SPACE_MAX_BYTES = 1 << 20  # a preset is ~300 bytes as YAML
MAX_CHOICES = 64  # values per choice list: a table times embed x heads x ratios block shapes per stage


def load_space(path: str | os.PathLike) -> SearchSpace:
    """A user space from YAML or JSON, through the checked reader (limits, duplicate keys, text only)."""
    p = Path(path)
    data = io.read_data(p, "space file", max_bytes=SPACE_MAX_BYTES)
    try:
        return space_from_dict(data)
    except DeployvitError as exc:
        raise io.in_file(p, exc) from None


_SPACE_KEYS = {"name", "img_size", "patch_size", "in_chans", "num_classes", "stages", "features"}
_STAGE_SPACE_KEYS = {"embed_dim", "depth", "num_heads", "mlp_ratio", "head_dim"}


def space_from_dict(data: Any, allow_preset_name: bool = False) -> SearchSpace:
    """Build a space from its dict form. A single-stage space may give the stage keys at top level.

    User files may not reuse a preset's name (archs name their space); checkpoints and tables that
    recorded a preset (possibly with overrides) rebuild it with `allow_preset_name`."""
    if not isinstance(data, dict):
        raise DeployvitError("space: expected a mapping")
    data = dict(data)
    single = "stages" not in data  # the stage keys at top level
    if single:
        data["stages"] = [{k: data.pop(k) for k in list(data) if k in _STAGE_SPACE_KEYS}]
    unknown = sorted(set(data) - _SPACE_KEYS, key=str)
    if unknown:
        allowed = _SPACE_KEYS | (_STAGE_SPACE_KEYS if single else set())
        raise DeployvitError(f"space: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    for key in ("name", "img_size", "patch_size", "num_classes"):
        if key not in data:
            raise DeployvitError(f"space: missing key {key!r}")
    if not isinstance(data["name"], str) or not data["name"]:
        raise DeployvitError("space.name: expected a non-empty string")
    if data["name"] in PRESETS and not allow_preset_name:
        raise DeployvitError(f"space.name: {data['name']!r} is a preset name; choose another name")
    if not isinstance(data["stages"], list):
        raise DeployvitError(f"space.stages: expected a list of stage mappings, got {json.dumps(data['stages'])}")
    stages = []
    for i, raw in enumerate(data["stages"]):
        where = f"stages[{i}]"
        if not isinstance(raw, dict):
            raise DeployvitError(f"{where}: expected a mapping")
        unknown = sorted(set(raw) - _STAGE_SPACE_KEYS, key=str)
        if unknown:
            raise DeployvitError(f"{where}: unknown key {unknown[0]!r}")
        missing = sorted({"embed_dim", "depth", "num_heads", "mlp_ratio"} - set(raw))
        if missing:
            raise DeployvitError(f"{where}: missing key {missing[0]!r}")
        stages.append(
            StageSpace(
                embed_dims=_int_choices(raw["embed_dim"], f"{where}.embed_dim"),
                depths=_int_choices(raw["depth"], f"{where}.depth"),
                num_heads=_int_choices(raw["num_heads"], f"{where}.num_heads"),
                mlp_ratios=tuple(float(r) for r in _num_choices(raw["mlp_ratio"], f"{where}.mlp_ratio")),
                head_dim=_one_int(raw.get("head_dim", DEFAULT_HEAD_DIM), f"{where}.head_dim"),
            )
        )
    max_stages = int(LIMITS["stages"][1])
    if not 1 <= len(stages) <= max_stages:
        raise DeployvitError(f"space.stages: expected 1 to {max_stages} stages, got {len(stages)}")
    space = SearchSpace(
        name=data["name"],
        img_size=_one_int(data["img_size"], "img_size"),
        patch_size=_one_int(data["patch_size"], "patch_size"),
        in_chans=_one_int(data.get("in_chans", 3), "in_chans"),
        num_classes=_one_int(data["num_classes"], "num_classes"),
        stages=tuple(stages),
        features=parse_features(data["features"]) if "features" in data else Features(),
    )
    _check_geometry(space)
    return space


def _num_choices(value: Any, where: str) -> tuple:
    """Sorted distinct choices, each a number within LIMITS of its field (the name after the last dot)."""
    lo, hi = LIMITS[where.rsplit(".", 1)[-1]]
    values = value if isinstance(value, list) else [value]

    def in_range(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and (lo < v if lo == 0 else lo <= v) and v <= hi

    if not values or len(values) > MAX_CHOICES or not all(in_range(v) for v in values):
        raise DeployvitError(
            f"{where}: expected a positive number up to {hi:g} or a list of 1 to {MAX_CHOICES} of them, got {_shown(value)}"
        )
    return tuple(sorted(set(values)))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_int(value: Any, where: str) -> int:
    """A field with one value, not a choice: a list is refused, not silently cut to its smallest."""
    if isinstance(value, list):
        raise DeployvitError(f"{where}: expected one positive integer, got a list {_shown(value)}")
    return _int_choices(value, where)[0]


def _int_choices(value: Any, where: str) -> tuple[int, ...]:
    values = _num_choices(value, where)
    if any(not isinstance(v, int) for v in values):
        raise DeployvitError(f"{where}: expected integers, got {_shown(value)}")
    return values


def _check_geometry(space: SearchSpace) -> None:
    check_geometry(space.img_size, space.patch_size, len(space.stages))
    for i in range(1, len(space.stages)):
        if min(space.stages[i].embed_dims) < max(space.stages[i - 1].embed_dims):
            raise DeployvitError(f"stages[{i}].embed_dim: must not be narrower than stage {i - 1} (the shortcut zero-pads)")
