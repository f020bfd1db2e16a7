"""Augmentation and loss recipes through timm: `create_transform` (RandAugment, random erasing),
`Mixup` (mixup/CutMix, with label smoothing folded into the soft targets) and the matching loss.

Presets (`--aug`):
- `deit`: the AutoFormer/DeiT supernet recipe (docs/REFERENCES.md section 1): RandAugment m9, mixup 0.8,
  CutMix 1.0, random erasing 0.25, label smoothing 0.1.
- `vitas-weak`: ViTAS's weak augmentation (docs/REFERENCES.md section 7): no RandAugment, no colour
  jitter, no mixup, CutMix 1.0, label smoothing 0.1, with the stronger regularisation ViTAS pairs it
  with (`PRESET_REGULARISATION`: weight decay 0.1 and drop path 0.2, twice DeiT's; deployvit's choice
  of "stronger", the paper's values are not available).
- `small`: the small-data recipe's augmentation (digits, CIFAR; `deployvit.train.recipe`): mild random
  resized crop (scale 0.75-1), flips where the data allows, label smoothing 0.1, no mixing. Short runs
  on a few thousand images cannot afford the DeiT set: on digits it keeps the loss at ln 10.
- `light`: random resized crop (scale 0.35-1) and label smoothing 0.1; for small data sets and demos.
- `none`: the eval transform and plain cross-entropy (deterministic tests, quick retrains).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

from torch import nn

from deployvit.errors import DeployvitError


@dataclass(frozen=True)
class AugConfig:
    auto_augment: str | None = None  # timm RandAugment string, e.g. "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.0
    scale: tuple[float, float] = (0.08, 1.0)
    mixup: float = 0.0
    cutmix: float = 0.0
    re_prob: float = 0.0
    smoothing: float = 0.0
    train_aug: bool = True  # False: train images get the eval transform

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


PRESETS: dict[str, AugConfig] = {
    "deit": AugConfig("rand-m9-mstd0.5-inc1", 0.4, (0.08, 1.0), 0.8, 1.0, 0.25, 0.1),
    "vitas-weak": AugConfig(None, 0.0, (0.08, 1.0), 0.0, 1.0, 0.0, 0.1),
    "small": AugConfig(None, 0.0, (0.75, 1.0), 0.0, 0.0, 0.0, 0.1),
    "light": AugConfig(None, 0.0, (0.35, 1.0), 0.0, 0.0, 0.0, 0.1),
    "none": AugConfig(train_aug=False),
}

# recipe fields an augmentation preset sets (unless the user sets them): ViTAS regularises harder
PRESET_REGULARISATION: dict[str, dict[str, float]] = {"vitas-weak": {"weight_decay": 0.1, "drop_path": 0.2}}


def get_aug(name: str, **overrides) -> AugConfig:
    """A preset with optional field overrides (None values are ignored)."""
    if name not in PRESETS:
        raise DeployvitError(f"unknown augmentation preset {name!r} (choose from {', '.join(PRESETS)})")
    cfg = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    for field in ("mixup", "cutmix", "re_prob", "smoothing"):
        value = getattr(cfg, field)
        if not 0.0 <= value <= (1.0 if field in ("re_prob", "smoothing") else 10.0):
            raise DeployvitError(f"augmentation {field} out of range: {value}")
    return cfg


def build_transform(
    cfg: AugConfig, img_size: int, mean, std, training: bool, hflip: bool, native_size: bool
) -> Callable:
    """timm's transform. Images already at `img_size` (CIFAR, digits) are not resized for eval."""
    from timm.data import create_transform

    crop_pct = 1.0 if native_size else 0.875
    if not (training and cfg.train_aug):
        return create_transform(img_size, is_training=False, mean=mean, std=std, crop_pct=crop_pct)
    return create_transform(
        img_size,
        is_training=True,
        scale=cfg.scale,
        hflip=0.5 if hflip else 0.0,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment,
        re_prob=cfg.re_prob,
        re_mode="pixel",
        mean=mean,
        std=std,
    )


def build_mixup(cfg: AugConfig, num_classes: int) -> Callable | None:
    """timm Mixup/CutMix on a whole batch (needs an even batch size); None when off."""
    if not (cfg.train_aug and cfg.mixes):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing, num_classes=num_classes)


def build_loss(cfg: AugConfig) -> nn.Module:
    """Soft-target CE after mixing (smoothing already in the targets), else smoothed or plain CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.train_aug and cfg.mixes:
        return SoftTargetCrossEntropy()
    if cfg.train_aug and cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(cfg.smoothing)
    return nn.CrossEntropyLoss()
