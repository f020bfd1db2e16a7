"""The training recipe: every default in one dataclass, and the rule that adapts it to the data.

`Recipe()` is what the user asked for: concrete values, or None / "auto" for "let the data decide".
`Recipe.resolve(facts, world_size)` turns it into the recipe that runs: the regime (`imagenet` or
`small`) is picked from the data set's size and resolution, every automatic field takes the regime's
(or the augmentation preset's) value, and the learning rate is scaled to the global batch. The CLI
builds its flags from these fields (default and help read from here), so
`Recipe().resolve(data_facts(source))` is exactly the default run of `train-supernet` / `retrain`.

Why two regimes (measured on the built-in digits, `test` space, 10 epochs; issue 12):
- The DeiT/AutoFormer recipe (RandAugment, mixup 0.8, CutMix 1.0, random erasing, crops down to 8%
  of the image, 5e-4 x batch/512) is built for 1.28 M ImageNet images over 300-500 epochs. On 1,188
  digits at batch 64 it is 180 optimizer steps of nearly unrecognisable images: the loss stays at
  ln 10 = 2.30 and the largest subnet at chance (8.9%). With the augmentation off it reaches 40%.
- The rest of the gap is the position embedding. DeiT initialises it at std 0.02, about a tenth of
  the patch features it is added to, so at the start attention cannot tell patches apart and the class
  token sees a bag of patches; Adam moves a weight by about lr per step, so growing it takes hundreds
  of steps. A 10-epoch run on a small data set does not have them: the largest subnet of a uniformly
  trained supernet reached 49% with std 0.02 and 68% with std 1.0 (batch 32, lr 2e-3, no
  augmentation); the standalone largest arch 81% vs 96% in 400 steps.
- Uniform sampling trains the largest subnet only through shared weights; the sandwich rule (largest
  + smallest + 2 random per step, BigNAS) reached 94% on the same budget (`REGIMES["small"].sampler`).
The ImageNet regime keeps the published recipe unchanged.

Learning-rate scaling (timm's train.py rule): lr = lr_base x (global batch / lr_base_size)^k with
k = 1 (`linear`, what DeiT and AutoFormer state: 5e-4 per 512 images) or k = 1/2 (`sqrt`, timm's
default for adaptive optimizers, used by the small-data regime). `--lr` sets the rate directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from deployvit.errors import DeployvitError
from deployvit.train.augment import PRESET_REGULARISATION, PRESETS, AugConfig, get_aug
from deployvit.train.data import DataFacts

AMP_MODES = ("off", "bf16", "fp16")
LR_SCALES = ("linear", "sqrt")


@dataclass(frozen=True)
class Regime:
    """The defaults of one kind of data set (what `auto` fields resolve to)."""

    name: str
    aug: str
    batch_size: int  # per rank
    lr_base: float  # at lr_base_size images per step
    lr_base_scale: str
    weight_decay: float
    drop_path: float
    pos_embed_std: float  # freshly initialised position embeddings
    sampler: str  # train-supernet's default subnet sampler
    why: str


# ImageNet-scale: at least this many training images of at least this short side
IMAGENET_SCALE_IMAGES, IMAGENET_SCALE_RESOLUTION = 100_000, 128

REGIMES: dict[str, Regime] = {
    "imagenet": Regime("imagenet", "deit", 64, 5e-4, "linear", 0.05, 0.1, 0.02, "uniform",
                       "DeiT/AutoFormer recipe (docs/REFERENCES.md section 1)"),
    "small": Regime("small", "small", 32, 8e-3, "sqrt", 0.05, 0.1, 1.0, "sandwich",
                    "small-data recipe: mild augmentation, 2e-3 at batch 32, position embedding std 1.0, sandwich sampling"),
}


def choose_regime(facts: DataFacts) -> str:
    """`imagenet` for ImageNet-scale data (many, large images), `small` otherwise."""
    big = facts.num_train >= IMAGENET_SCALE_IMAGES and facts.resolution >= IMAGENET_SCALE_RESOLUTION
    return "imagenet" if big else "small"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A recipe field whose CLI flag reads `default` and `help` from here."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights (the resolved recipe is stored in the checkpoint;
    a resume must match it). None / "auto": chosen by `resolve` from the data."""

    recipe: str = _opt("auto", "Recipe regime: auto (from the data's size and resolution), imagenet or small.", choices=("auto", *REGIMES))
    epochs: int = _opt(100, "Training epochs.")
    batch_size: int | None = _opt(None, "Images per step per rank (auto: 64 imagenet, 32 small).")
    opt: str = _opt("adamw", "timm optimizer name.")
    lr: float | None = _opt(None, "Peak learning rate (auto: --lr-base scaled to the global batch).")
    lr_base: float | None = _opt(None, "Learning rate at --lr-base-size images per step (auto: 5e-4 imagenet, 8e-3 small).")
    lr_base_size: int = _opt(512, "Global batch at which --lr-base applies.")
    lr_base_scale: str | None = _opt(None,
                                     "How lr follows the global batch: linear or sqrt (auto: linear imagenet as DeiT, sqrt small as timm for adaptive "
                                     "optimizers).", choices=LR_SCALES)
    min_lr: float = _opt(1e-5, "Final learning rate of the cosine schedule.")
    warmup_lr: float = _opt(1e-6, "Learning rate at the start of the warm-up.")
    warmup_epochs: int | None = _opt(None, "Linear warm-up epochs (auto: epochs // 10, at most 5).")
    weight_decay: float | None = _opt(None,
                                      "AdamW weight decay; position embeddings, class token, norms and biases are exempt (auto: 0.05, 0.1 with vitas-weak).")
    clip_grad: float = _opt(0.0, "Max gradient norm (0: off).")
    ema_decay: float = _opt(0.0, "Model EMA decay (0: off).")
    amp: str = _opt("off", "Mixed precision (CUDA).", choices=AMP_MODES)
    drop_path: float | None = _opt(None, "Stochastic depth of the last block (auto: 0.1, 0.2 with vitas-weak).")
    pos_embed_std: float | None = _opt(None, "Std of freshly initialised position embeddings (auto: 0.02 imagenet as DeiT, 1.0 small).")
    aug: str = _opt("auto", "Augmentation preset: auto (the regime's), deit, small, vitas-weak, light, none.")
    mixup: float | None = _opt(None, "Override the preset's mixup alpha.")
    cutmix: float | None = _opt(None, "Override the preset's CutMix alpha.")
    smoothing: float | None = _opt(None, "Override the preset's label smoothing.")
    re_prob: float | None = _opt(None, "Override the preset's random-erasing probability.", flag="--reprob")
    seed: int = _opt(0, "Seed of initialisation, data order, augmentation and sampling.")

    # --- resolution ------------------------------------------------------------------------------

    @property
    def resolved(self) -> bool:
        return all(getattr(self, f.name) not in (None, "auto") for f in fields(self) if f.name not in _OVERRIDES)

    def resolve(self, facts: DataFacts, world_size: int = 1) -> "Recipe":
        """The recipe that runs on `facts` with `world_size` ranks (validated)."""
        if self.recipe != "auto" and self.recipe not in REGIMES:
            raise DeployvitError(f"unknown --recipe {self.recipe!r} (choose from auto, {', '.join(REGIMES)})")
        regime = REGIMES[choose_regime(facts) if self.recipe == "auto" else self.recipe]
        aug = regime.aug if self.aug == "auto" else self.aug
        if aug not in PRESETS:
            raise DeployvitError(f"unknown --aug {aug!r} (choose from auto, {', '.join(PRESETS)})")
        reg = PRESET_REGULARISATION.get(aug, {})
        pick = lambda name, fallback: getattr(self, name) if getattr(self, name) is not None else fallback  # noqa: E731
        batch = pick("batch_size", regime.batch_size)
        scale = pick("lr_base_scale", regime.lr_base_scale)
        lr_base = pick("lr_base", regime.lr_base)
        out = replace(
            self, recipe=regime.name, aug=aug, batch_size=batch, lr_base=lr_base, lr_base_scale=scale,
            lr=pick("lr", scaled_lr(lr_base, batch * world_size, self.lr_base_size, scale)),
            warmup_epochs=pick("warmup_epochs", min(5, self.epochs // 10)),
            weight_decay=pick("weight_decay", reg.get("weight_decay", regime.weight_decay)),
            drop_path=pick("drop_path", reg.get("drop_path", regime.drop_path)),
            pos_embed_std=pick("pos_embed_std", regime.pos_embed_std),
        )
        out.validate()
        return out

    @property
    def aug_config(self) -> AugConfig:
        return get_aug(self.aug, mixup=self.mixup, cutmix=self.cutmix, smoothing=self.smoothing, re_prob=self.re_prob)

    def describe(self, facts: DataFacts, world_size: int = 1) -> str:
        """One line for the start of a run: which recipe, why, and its main numbers."""
        regime = REGIMES[self.recipe]
        size = f"{facts.num_train} train images at {facts.resolution} px"
        why = "chosen" if choose_regime(facts) == self.recipe else "forced by --recipe"
        rule = f"{self.lr_base_scale} from {self.lr_base:g} at {self.lr_base_size}"
        scaled = scaled_lr(self.lr_base, self.batch_size * world_size, self.lr_base_size, self.lr_base_scale)
        rule = rule if math.isclose(self.lr, scaled) else "set by --lr"
        return (f"recipe {self.recipe} ({regime.why}; {why} for {size}): aug {self.aug}, batch {self.batch_size}/rank, "
                f"lr {self.lr:.3g} ({rule}), "
                f"warmup {self.warmup_epochs} of {self.epochs} epochs, weight decay {self.weight_decay:g}, "
                f"drop path {self.drop_path:g}, pos embed std {self.pos_embed_std:g}")

    def validate(self) -> None:
        if not self.resolved:
            raise DeployvitError("internal: the recipe must be resolved against the data (Recipe.resolve) before training")
        if self.epochs < 1:
            raise DeployvitError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.lr_base_size < 1:
            raise DeployvitError(f"--batch-size and --lr-base-size must be >= 1, got {self.batch_size}, {self.lr_base_size}")
        if not self.lr > 0 or not self.lr_base > 0 or self.min_lr < 0 or self.weight_decay < 0 or self.pos_embed_std < 0:
            raise DeployvitError(f"--lr and --lr-base must be > 0 and --min-lr, --weight-decay, --pos-embed-std >= 0 (got {self.lr}, {self.lr_base}, "
                                 f"{self.min_lr}, {self.weight_decay}, {self.pos_embed_std})")
        if self.lr_base_scale not in LR_SCALES:
            raise DeployvitError(f"--lr-base-scale must be linear or sqrt, got {self.lr_base_scale!r}")
        if self.warmup_epochs < 0 or (self.warmup_epochs and self.warmup_epochs >= self.epochs):
            raise DeployvitError(f"--warmup-epochs {self.warmup_epochs} must be 0 or smaller than --epochs {self.epochs}")
        if self.clip_grad < 0 or not 0 <= self.ema_decay < 1 or not 0 <= self.drop_path < 1:
            raise DeployvitError("--clip-grad must be >= 0, --ema-decay and --drop-path in [0, 1)")
        if not _is_timm_optimizer(self.opt):
            raise DeployvitError(f"unknown --opt {self.opt!r}: use a timm optimizer name (adamw, sgd, lamb, ...; timm.optim.list_optimizers())")
        if self.amp not in AMP_MODES:
            raise DeployvitError(f"--amp must be off, bf16 or fp16, got {self.amp!r}")
        aug = self.aug_config
        if aug.train_aug and aug.mixes and self.batch_size % 2:
            raise DeployvitError(f"mixup/CutMix need an even --batch-size, got {self.batch_size}")

    # --- storage ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        if not isinstance(data.get("aug"), str) or set(data) - known:
            raise DeployvitError("the checkpoint's recipe is from an older deployvit (before --aug auto); start a new run")
        return cls(**data)


_OVERRIDES = ("mixup", "cutmix", "smoothing", "re_prob")  # None is a value here: "the preset's"


def scaled_lr(lr_base: float, global_batch: int, base_size: int, scale: str) -> float:
    """timm's rule: lr_base x (global_batch / base_size), or its square root for `sqrt`."""
    ratio = global_batch / base_size
    return lr_base * (math.sqrt(ratio) if scale == "sqrt" else ratio)


def _is_timm_optimizer(name: str) -> bool:
    """Whether `create_optimizer_v2` knows `name` (optionally with timm's `lookahead_` prefix)."""
    from timm.optim import get_optimizer_info

    base = name.lower().removeprefix("lookahead_")
    try:
        get_optimizer_info(base)
    except ValueError:
        return False
    return True
