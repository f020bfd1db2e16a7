"""The weight-sharing supernet of a search space: set an arch, run it, extract it.

`set_arch(arch)` picks, per part of the arch, which elastic weights it uses (channel windows, active
layers); `forward` runs every part through the standalone module class of `deployvit.models` with
those sliced weights (`torch.func.functional_call` on a shape-only template on the meta device), so
there is one forward implementation and `extract(arch)` is just copying the slices.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

from deployvit.arch import Arch
from deployvit.models import Block, ViT, build_part, drop_path_rates
from deployvit.parts import Part, arch_parts
from deployvit.spaces import SearchSpace, get_space, space_from_dict
from deployvit.errors import DeployvitError
from deployvit.supernet.elastic import QKV_BIAS_LAYOUTS, ElasticBlock, ElasticHead, ElasticReduction, ElasticStem, Sliced
from deployvit.supernet.sharing import ChannelSelect, active_layers, channel_windows, to_select


class Supernet(nn.Module):
    """All archs of `space` in one set of weights.

    cyclic: ViTAS-style cyclic weight sharing of the token-embedding channels (else AutoFormer prefix).
    identity_shift: ViTAS-style identity shifting of skipped layers during training (`shift` of
    `set_arch`); offset 0 is canonical and is what `extract` uses.
    qkv_bias: how a subnet slices the q, k and v biases (`elastic.ElasticBlock`): "split" (deployvit's,
    like the weights) or "contiguous" (AutoFormer's released supernets, kept so their subnets compute
    what AutoFormer's code computes).
    """

    def __init__(self, space: "SearchSpace | str | os.PathLike", cyclic: bool = False, identity_shift: bool = False,
                 drop_path_rate: float = 0.0, qkv_bias: str = "split"):
        """`space`: a SearchSpace, a preset's name (`Supernet("test")`) or a YAML/JSON space file."""
        super().__init__()
        if not isinstance(space, SearchSpace):
            space = get_space(space)
        if qkv_bias not in QKV_BIAS_LAYOUTS:
            raise ValueError(f"qkv_bias: expected one of {QKV_BIAS_LAYOUTS}, got {qkv_bias!r}")
        self.space, self.cyclic, self.identity_shift, self.qkv_bias = space, cyclic, identity_shift, qkv_bias
        self.drop_path_rate = drop_path_rate
        first, last = space.stages[0], space.stages[-1]
        self.stem = ElasticStem(space.img_size, space.patch_size, space.in_chans, first.max_embed_dim)
        self.reductions = nn.ModuleList(
            ElasticReduction(space.grid(si), space.stages[si - 1].max_embed_dim, s.max_embed_dim)
            for si, s in enumerate(space.stages)
            if si > 0
        )
        self.stages = nn.ModuleList(
            nn.ModuleList(
                ElasticBlock(s.max_embed_dim, max(s.num_heads) * s.head_dim, s.max_mlp_hidden, space.features.rel_pos, s.head_dim,
                             qkv_bias)
                for _ in range(s.max_depth)
            )
            for s in space.stages
        )
        self.head = ElasticHead(last.max_embed_dim, space.num_classes)
        self._channels: list[dict[int, ChannelSelect]] = [
            {c: to_select(idx) for c, idx in channel_windows(s.embed_dims, cyclic).items()} for s in space.stages
        ]
        self._templates: dict[Part, nn.Module] = {}
        self._plan: list[tuple[Part, Callable[[], Sliced], float]] | None = None
        self.arch: Arch | None = None

    @property
    def config(self) -> dict[str, Any]:
        """What `from_config` needs to rebuild this supernet (stored in checkpoints)."""
        layout = {"qkv_bias": self.qkv_bias} if self.qkv_bias != "split" else {}  # absent: as before it existed
        return {
            "space": self.space.to_dict(),
            "space_hash": self.space.hash(),
            "cyclic": self.cyclic,
            "identity_shift": self.identity_shift,
            "drop_path_rate": self.drop_path_rate,
            **layout,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Supernet":
        space = space_from_dict(config["space"], allow_preset_name=True)
        layout = config.get("qkv_bias", "split")
        if layout not in QKV_BIAS_LAYOUTS:
            raise DeployvitError(f"supernet.qkv_bias: expected one of {', '.join(QKV_BIAS_LAYOUTS)}, got {layout!r}")
        return cls(space, config.get("cyclic", False), config.get("identity_shift", False), config.get("drop_path_rate", 0.0), layout)

    def no_weight_decay(self) -> set[str]:
        """The tensors exempt from weight decay, as `ViT.no_weight_decay` names them for the standalone
        model: position embeddings (relative ones included) and the class token (norm weights and
        biases are 1-D here too)."""
        names = {"stem.pos_embed", "stem.cls_token"} | {n for n, _ in self.named_parameters() if ".rel_" in n}
        return names | {f"reductions.{i}.pos_embed" for i in range(len(self.reductions))}

    # --- choosing a subnet ---------------------------------------------------------------------------

    def layer_indices(self, arch: Arch, shift: int = 0) -> list[list[int]]:
        """Supernet layer used by each arch layer, per stage."""
        return [
            active_layers(s.max_depth, stage.depth, shift, self.identity_shift)
            for stage, s in zip(arch.stages, self.space.stages)
        ]

    def set_arch(self, arch: Arch, shift: int = 0) -> None:
        """Make `forward` run `arch`; `shift` rotates identity positions (training only)."""
        self.space.validate(arch)
        parts = arch_parts(arch)
        rates = iter(drop_path_rates(self.drop_path_rate, arch.depth))
        chans = [self._channels[si][stage.embed_dim] for si, stage in enumerate(arch.stages)]
        plan: list[tuple[Part, Callable[[], Sliced], float]] = [(parts[0], lambda: self.stem.sliced(chans[0]), 0.0)]
        it = iter(parts[1:-1])
        for si, (stage, layers) in enumerate(zip(arch.stages, self.layer_indices(arch, shift))):
            if si > 0:
                red = self.reductions[si - 1]
                plan.append((next(it), lambda red=red, a=chans[si - 1], b=chans[si]: red.sliced(a, b), 0.0))
            for li in layers:
                part = next(it)
                block: ElasticBlock = self.stages[si][li]
                plan.append(
                    (part, lambda b=block, c=chans[si], p=part: b.sliced(c, p.attn_dim, p.mlp_hidden), next(rates))
                )
        plan.append((parts[-1], lambda: self.head.sliced(chans[-1]), 0.0))
        self._plan, self.arch = plan, arch

    # --- running --------------------------------------------------------------------------------------

    def _template(self, part: Part) -> nn.Module:
        module = self._templates.get(part)
        if module is None:
            with torch.device("meta"):
                module = build_part(part)
            self._templates[part] = module
        return module

    def part_weights(self) -> list[Sliced]:
        """The current arch's sliced weights, one dict per part in run order (views of the supernet's
        tensors where the channel choice is a window, so taking them copies little)."""
        if self._plan is None:
            raise RuntimeError("call set_arch(arch) before forward")
        return [sliced() for _, sliced, _ in self._plan]

    def forward(self, x: torch.Tensor, weights: list[Sliced] | None = None) -> torch.Tensor:
        """Run the current arch; `weights` (from `part_weights`, possibly detached into leaves of
        their own) stand in for the supernet's slices, for scores that need dR/dW of the subnet's
        own tensors without building a standalone model."""
        if weights is None:
            weights = self.part_weights()
        for (part, _, rate), params in zip(self._plan, weights, strict=True):
            template = self._template(part)
            template.train(self.training)
            if isinstance(template, Block):
                template.drop_path1.drop_prob = template.drop_path2.drop_prob = rate
            x = functional_call(template, params, (x,), strict=True)
        return x

    # --- extraction -----------------------------------------------------------------------------------

    @torch.no_grad()
    def extract(self, arch: Arch, drop_path_rate: float = 0.0) -> ViT:
        """A standalone `ViT` with copies of `arch`'s weights (canonical layer mapping, shift 0)."""
        previous = self.arch
        self.set_arch(arch)
        device = self.head.fc_bias.device
        with torch.device("meta"):
            model = ViT(arch, drop_path_rate)
        model = model.to_empty(device=device)
        for module, (_, sliced, _) in zip(model.part_modules(), self._plan):
            module.load_state_dict(sliced(), strict=True)
        if previous is not None:
            self.set_arch(previous)
        return model.train(self.training)

    @torch.no_grad()
    def load_extracted(self, arch: Arch, model: ViT) -> None:
        """The inverse of `extract`: write `model`'s weights (a standalone ViT of `arch`) into the
        supernet's slices for `arch`. Importers build the standalone model of the space's largest arch
        from a parent's weights, and its slices are then every weight the supernet has.

        Prefix windows only: a cyclic window gathers channels into a copy, not a view to write through."""
        if self.cyclic:
            raise ValueError("load_extracted needs prefix (non-cyclic) channel windows")
        previous = self.arch
        self.set_arch(arch)
        for module, (_, sliced, _) in zip(model.part_modules(), self._plan, strict=True):
            targets = sliced()
            for name, value in module.state_dict().items():
                targets[name].copy_(value)
            for name, value in sliced().items():  # read back: a slice that was a copy did not take the values
                if not torch.equal(value, module.state_dict()[name]):
                    raise RuntimeError(f"load_extracted: {name} is not a view of the supernet's weights")
        if previous is not None:
            self.set_arch(previous)
