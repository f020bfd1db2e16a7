"""Where the model to export comes from: a deployvit arch (with a `retrain` checkpoint or random
weights) or any timm model (pretrained=False: never downloads). Checkpoints are loaded strictly, so
weights that do not match the arch are a one-line error (exit 2), not a silently half-loaded model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from deployvit.errors import DeployvitError
from deployvit.weights import apply_weights, check_timm_name, read_weights, stored_arch


@dataclass
class SourceModel:
    """A float32 model ready to export, with what the report says about it."""

    name: str
    model: nn.Module
    img_size: int
    in_chans: int
    arch: Any = None  # deployvit Arch, None for timm models
    info: dict[str, Any] | None = None


def load_arch_model(arch_path: str | None, checkpoint: str | None) -> SourceModel:
    """The standalone ViT of `arch_path` (or of the arch stored in a `retrain` checkpoint) with the
    checkpoint's weights; random weights without a checkpoint (fine for latency, said in the report)."""
    from deployvit.arch import load_arch
    from deployvit.counting import count_flops, count_params
    from deployvit.models import build_model

    state, meta = read_weights(checkpoint) if checkpoint else ({}, {})
    stored = stored_arch(meta, checkpoint)
    if arch_path is None and stored is None:
        raise DeployvitError("give --arch ARCH.json (the checkpoint does not record its arch)")
    arch = load_arch(arch_path) if arch_path else stored
    if stored is not None and stored.key != arch.key:
        raise DeployvitError(f"checkpoint {checkpoint} was saved for another arch ({stored.summary()}), not {arch.summary()}")
    model = build_model(arch).eval()
    if checkpoint:
        apply_weights(model, state, checkpoint, f"arch {Path(arch_path).name if arch_path else arch.space}")
    name = _run_name(Path(arch_path) if arch_path else Path(checkpoint))
    info = {"arch": arch.to_dict(), "params": count_params(arch), "flops": count_flops(arch),
            "checkpoint": checkpoint or "none: random weights (latency is meaningful, accuracy is not)"}
    return SourceModel(name, model, arch.img_size, arch.in_chans, arch, info)


def _run_name(path: Path) -> str:
    """`runs/x/best.arch.json` -> `x`, `tiny.arch.json` -> `tiny`: the name the report rows carry."""
    stem = path.name.split(".")[0]
    return path.resolve().parent.name if stem in ("arch", "best", "checkpoint") and path.resolve().parent.name else stem


def load_timm_model(name: str, checkpoint: str | None = None, *, img_size: int | None = None,
                    num_classes: int | None = None) -> SourceModel:
    """A timm model created with pretrained=False (never downloads), at `img_size`/`num_classes`
    when given and the model family accepts them (to compare with an arch at the same input)."""
    check_timm_name(name, "--timm-model", "--checkpoint")  # before timm: a hub reference would download, a path would fail inside it
    import timm

    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except TypeError:  # families without an img_size argument (CNNs) take any input size
            model = timm.create_model(name, pretrained=False, **{k: v for k, v in kwargs.items() if k != "img_size"})
    except RuntimeError as exc:
        raise DeployvitError(f"timm model {name!r}: {str(exc).splitlines()[0]}") from None
    model.eval()
    if checkpoint:
        apply_weights(model, read_weights(checkpoint)[0], checkpoint, f"timm model {name}")
    in_chans, _, default_size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    size = img_size or default_size
    params = sum(p.numel() for p in model.parameters())
    info = {"timm_model": name, "params": params, "checkpoint": checkpoint or "none: random weights (pretrained=False)"}
    return SourceModel(name, model, size, in_chans, None, info)
