"""What every import does once a source has been read: the parent as a deployvit model, its default
space, the supernet of that space holding the parent's weights, importance ordering, the held-out
images, and the output folder (written whole or not at all).

A source (`timm_vit`, `autoformer`) turns its file into a `Parent`: a standalone `ViT` of the full
extent of the weights (for a timm model: the model itself; for an AutoFormer supernet: its
super-dimensions) and the space the import offers by default. Everything after that is shared:

1. the full weights go into a supernet of the one-arch space of that extent (`Supernet.load_extracted`),
   checked against the source's own model on a random image when the source has one (timm);
2. importance ordering permutes them, function-preserving (checked again), when the parent was not
   trained for weight sharing (`ordering`);
3. the supernet of the import's space takes leading slices of them (every elastic weight of a
   prefix supernet is a leading slice of the same weight of a wider one);
4. DIR receives `supernet.pt` (a deployvit supernet checkpoint: `search --score supernet`,
   `retrain --init`, `evaluate --supernet` and `export --checkpoint` read it), `space.yaml`,
   `parent.arch.json` (the space's largest arch: the parent, and `retrain --distill`'s teacher),
   any published archs of the source, and `import.json` (provenance and checks).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from deployvit import io
from deployvit.arch import Arch, Features, mlp_hidden
from deployvit.counting import count_flops, count_params
from deployvit.errors import DeployvitError
from deployvit.models import ViT
from deployvit.spaces import SearchSpace, StageSpace
from deployvit.supernet import Supernet

CHECKPOINT = "supernet.pt"
SPACE_FILE = "space.yaml"
PARENT_ARCH = "parent.arch.json"
RECORD = "import.json"

#: the default grid below a parent: these fractions of its embed dim (rounded to a multiple of 8)
#: and of its MLP ratio; heads from half the parent's (rounded up) to all; depth likewise
GRID = (0.5, 0.625, 0.75, 0.875, 1.0)
#: the import's self-check: the converted parent against the source's own model, max |logit diff|
#: relative to the largest logit (fp32 sums in another order differ by ~1e-6)
SELF_CHECK_TOL = 1e-4


@dataclass
class Parent:
    """A source read into deployvit's terms (see the module docstring)."""

    model: ViT  # standalone ViT of the full extent of the weights
    space: SearchSpace  # the import's default space (its largest arch fits within `model`)
    source: dict[str, Any]  # provenance for import.json and the checkpoint
    reference: nn.Module | None = None  # the source's own model, to check the conversion against
    trained_as_supernet: bool = False  # AutoFormer: leading slices are already what it trained
    qkv_bias: str = "split"  # how its subnets slice the q, k, v biases (AutoFormer: "contiguous")
    archs: dict[str, Arch] = field(default_factory=dict)  # published archs of the source, written as NAME.arch.json
    notes: list[str] = field(default_factory=list)


@dataclass
class Imported:
    """The result of an import, before it is written."""

    supernet: Supernet
    parent: Arch  # the space's largest arch
    record: dict[str, Any]
    archs: dict[str, Arch]
    held_out: dict[str, Any]
    data: dict[str, Any] | None


def _round8(x: float) -> int:
    return max(8, int(8 * round(x / 8)))


def default_stage(embed_dim: int, depth: int, num_heads: int, head_dim: int, mlp_ratio: float) -> StageSpace:
    """The default choices below a parent: embed dims at GRID x the parent's (multiples of 8), MLP
    ratios at GRID x the parent's, heads and depth from half the parent's (rounded up) to the parent's."""
    embeds = sorted({_round8(embed_dim * f) for f in GRID[:-1] if _round8(embed_dim * f) < embed_dim} | {embed_dim})
    ratios = sorted({round(mlp_ratio * f, 4) for f in GRID[:-1]} | {mlp_ratio})
    heads = tuple(range(math.ceil(num_heads / 2), num_heads + 1))
    depths = tuple(range(math.ceil(depth / 2), depth + 1))
    return StageSpace(tuple(embeds), depths, heads, tuple(ratios), head_dim)


def single_arch_space(name: str, arch: Arch) -> SearchSpace:
    """The space whose only arch is `arch` (uniform layers): the full extent of a parent's weights."""
    (stage,) = arch.stages
    layer = stage.layers[0]
    if any(l != layer for l in stage.layers):
        raise DeployvitError("a parent with layers of different widths is not supported")
    choices = StageSpace((stage.embed_dim,), (stage.depth,), (layer.num_heads,), (layer.mlp_ratio,), stage.head_dim)
    return SearchSpace(name, arch.img_size, arch.patch_size, arch.in_chans, arch.num_classes, (choices,), arch.features)


def fit_user_space(space: SearchSpace, full: Arch) -> SearchSpace:
    """`--space FILE` checked against the weights: same geometry, class count and head dim, features
    filled in from the parent (or equal to them), every choice within the weights' extent."""
    if space.features == Features() and full.features != Features():
        space = replace(space, features=full.features)
    if space.features != full.features:
        raise DeployvitError(f"--space: features {space.features.to_dict()} differ from the parent's {full.features.to_dict()}")
    for f in ("img_size", "patch_size", "in_chans", "num_classes"):
        if getattr(space, f) != getattr(full, f):
            raise DeployvitError(f"--space: {f} is {getattr(space, f)}, the parent's is {getattr(full, f)}")
    if space.multi_stage:
        raise DeployvitError("--space: a multi-stage space cannot slice a single-stage parent")
    (s,), (stage,) = space.stages, full.stages
    heads = stage.layers[0].num_heads
    hidden = mlp_hidden(stage.embed_dim, stage.layers[0].mlp_ratio)
    limits = [("head_dim", s.head_dim, stage.head_dim, s.head_dim != stage.head_dim),
              ("embed_dim", s.max_embed_dim, stage.embed_dim, s.max_embed_dim > stage.embed_dim),
              ("depth", s.max_depth, stage.depth, s.max_depth > stage.depth),
              ("num_heads", max(s.num_heads), heads, max(s.num_heads) > heads),
              ("mlp_ratio", f"{s.max_mlp_hidden} hidden units", f"{hidden}", s.max_mlp_hidden > hidden)]
    for name, got, parent, bad in limits:
        if bad:
            raise DeployvitError(f"--space: {name} {got} is beyond the parent's weights ({parent})")
    return space


@torch.no_grad()
def max_logit_diff(a: nn.Module, b: nn.Module, img_size: int, in_chans: int, seed: int = 0) -> float:
    """max |a(x) - b(x)| / max(1, max |a(x)|) on two seeded random images, both in eval mode."""
    x = torch.randn(2, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    was = (a.training, b.training)
    a.eval(), b.eval()
    try:
        ya, yb = a(x), b(x)
    finally:
        a.train(was[0]), b.train(was[1])
    return float((ya - yb).abs().max() / ya.abs().max().clamp(min=1.0))


def _check(diff: float, what: str) -> None:
    if not diff <= SELF_CHECK_TOL:
        raise DeployvitError(f"import self-check failed: {what} differ by {diff:.2e} (relative; expected <= {SELF_CHECK_TOL:g})")


@torch.no_grad()
def shrink_into(full: Supernet, space: SearchSpace) -> Supernet:
    """The supernet of `space` holding leading slices of `full`'s weights (prefix windows: every
    elastic weight of the narrower supernet is a leading slice of the wider one's; q, k and v biases
    are three leading slices of their end-to-end vector)."""
    target = _uninitialised(Supernet, space, qkv_bias=full.qkv_bias)
    source = full.state_dict()
    state = {}
    for name, t in target.state_dict().items():
        s = source[name]
        if name.endswith("qkv_bias") and full.qkv_bias == "split":
            s = s.view(3, -1)[:, : t.numel() // 3].reshape(-1)
        else:
            for dim, size in enumerate(t.shape):
                s = s.narrow(dim, 0, size)
        state[name] = s.clone()
    target.load_state_dict(state)  # strict: every tensor of the target is written
    return target.eval()


def _uninitialised(cls, *args, **kwargs):
    """A module with allocated but uninitialised weights (every one is written next): drawing a
    random initialisation of a ViT-B-sized supernet only to overwrite it costs seconds."""
    with torch.device("meta"):
        module = cls(*args, **kwargs)
    return module.to_empty(device="cpu")


def build_import(parent: Parent, space: SearchSpace | None, order: str,
                 batches: Callable[[], Iterable[torch.Tensor]] | None = None,
                 log: Callable[[str], None] = print) -> tuple[Supernet, dict[str, Any]]:
    """Steps 1-3 of the module docstring: the supernet of the import's space and the record of checks."""
    from deployvit.importers import ordering

    full_arch = parent.model.arch
    full = _uninitialised(Supernet, single_arch_space(parent.space.name, full_arch), qkv_bias=parent.qkv_bias)
    full.load_extracted(full_arch, parent.model)  # the largest arch's slices are every weight it has
    full.eval()
    record: dict[str, Any] = {"order": order, "self_check": {}}
    if parent.reference is not None:
        diff = max_logit_diff(parent.reference, full, full_arch.img_size, full_arch.in_chans)
        _check(diff, "the source's logits and the converted parent's")
        record["self_check"]["converted_vs_source"] = diff
    if order != "none":
        if parent.trained_as_supernet:
            raise DeployvitError(f"--order {order}: {parent.source['from']} was trained as a supernet for leading slices; "
                                 "reordering would break its subnets (use --order none)")
        before = full.extract(full_arch).eval()
        if order == "activation":
            if batches is None:
                raise DeployvitError("--order activation needs --data (a few batches of your images)")
            importance = ordering.activation_importance(full, batches())
        else:
            importance = ordering.magnitude_importance(full)
        record["ordering"] = ordering.reorder(full, importance)
        diff = max_logit_diff(before, full, full_arch.img_size, full_arch.in_chans)
        _check(diff, "the parent's logits before and after importance ordering")
        record["self_check"]["ordered_vs_unordered"] = diff
        log(f"ordered channels, heads and MLP units by {order} importance (parent logits unchanged: max diff {diff:.1e})")
    target_space = space if space is not None else parent.space
    return shrink_into(full, target_space), record


def checkpoint_state(imported: Imported) -> dict[str, Any]:
    """The supernet checkpoint (`deployvit.train` format, kind supernet) of an import."""
    supernet = imported.supernet
    return {
        "kind": "supernet",
        "meta": {
            "num_classes": supernet.space.num_classes,
            "supernet": supernet.config,
            "sampler": None,
            "data": imported.data,
            "held_out": imported.held_out,
            "imported": imported.record,
        },
        "model": {k: v.detach().contiguous() for k, v in supernet.state_dict().items()},
        "ema": None,
        "progress": None,
        "sampler": None,
        "history": [],
    }


def write_import(out: Path, imported: Imported) -> list[Path]:
    """Write the import into `out` whole or not at all: every file goes into a temp folder beside it,
    renamed to `out` at the end (an existing non-empty `out` is refused before anything is built)."""
    import yaml

    from deployvit.train.checkpoint import save_checkpoint

    check_out(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise io.write_error(out, exc) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the published folder gets the usual mode
        space = imported.supernet.space
        save_checkpoint(tmp / CHECKPOINT, checkpoint_state(imported))
        io.write_text(tmp / SPACE_FILE, yaml.safe_dump(space.to_dict(), sort_keys=False))
        imported.parent.save(tmp / PARENT_ARCH)
        for name, arch in imported.archs.items():
            arch.save(tmp / f"{io.safe_component(name, 'published arch name')}.arch.json")
        record = dict(imported.record, parent={"arch": PARENT_ARCH, "params": count_params(imported.parent),
                                              "flops": count_flops(imported.parent), "summary": imported.parent.summary()})
        io.write_json(tmp / RECORD, record)
        if out.exists():
            out.rmdir()  # empty (checked above); os.replace cannot rename over a directory elsewhere
        os.replace(tmp, out)
    except OSError as exc:  # a full disk, a read-only file system: the temp folder goes, `out` stays absent
        shutil.rmtree(tmp, ignore_errors=True)
        raise io.write_error(out, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out.iterdir())


def remove_dead_temp(out: Path) -> None:
    """Remove the temp folders a killed import into `out` left beside it (`.OUT.xxxxxxxx.tmp`). Only
    call it holding `io.output_lock(out)`: then no live import of `out` can own one of them."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.tmp")  # mkdtemp's names for this folder only
    try:
        leftovers = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    except OSError:  # the parent does not exist yet: nothing was left
        return
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)


def check_out(out: Path) -> None:
    """An existing, non-empty --out is refused: an import never mixes with other files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DeployvitError(f"--out {out} already exists and is not empty; choose a new folder")


def held_out_and_batches(source, img_size: int, per_class: int, batches: int = 4, batch_size: int = 64):
    """(held-out record for the checkpoint, a callable yielding `batches` seeded batches of training
    images outside the held-out set): the held-out images are carved as `train-supernet` carves them,
    so `search --score supernet` scores on them; the batches are what `--order activation` measures."""
    from deployvit.train.augment import get_aug
    from deployvit.train.data import SplitDataset, held_out_split
    from deployvit.train.setup import transforms_for

    held = held_out_split(source, per_class)
    record = {"per_class": held.per_class, "seed": held.seed, "ids": list(held.held_out_ids)}
    dataset = SplitDataset(source.train, transforms_for(source, get_aug("none"), img_size).eval, held.train)

    def calibration() -> Iterable[torch.Tensor]:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
        for i in range(min(batches, max(len(dataset) // batch_size, 1))):
            yield torch.stack([dataset[int(j)][0] for j in order[i * batch_size:(i + 1) * batch_size]])

    return record, calibration
