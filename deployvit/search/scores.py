"""Architecture scores for search: higher is better.

`DSSScore` is deployvit's reading of the TF-TAS DSS-indicator (REFERENCES.md sections 3 and 7):
random supernet weights made absolute, one fixed-seed Gaussian batch, R = sum of logits, one
backward; score = sum over attention weights (q, k, v and the output projection, each its own
matrix) of ||dR/dW||_nuc * ||W||_nuc + sum over MLP weights (fc1, fc2) and the classifier (once) of
sum |dR/dW * W|. Patch embedding excluded. Weights are the subnet's own slices of one seeded
supernet, so archs are scored on consistent weights, and each weight's nuclear norm is computed once
per (position, slice) and cached. Nuclear norms come from the eigenvalues of the smaller Gram matrix
in float64, several times cheaper than an SVD at these sizes and exact up to rounding.
"""

from __future__ import annotations

from typing import Protocol

import torch

from deployvit.arch import Arch
from deployvit.spaces import SearchSpace
from deployvit.supernet import Supernet


class Score(Protocol):
    name: str

    def __call__(self, arch: Arch) -> float: ...


def _gram(m: torch.Tensor) -> torch.Tensor:
    m = m.detach().double()
    return m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T


def nuclear_norms(matrices: list[torch.Tensor]) -> list[float]:
    """Sums of singular values, via the eigenvalues of each smaller Gram matrix (float64); matrices
    whose Grams share a shape go through one batched eigensolver call."""
    grams = [_gram(m) for m in matrices]
    out = [0.0] * len(grams)
    by_shape: dict[tuple, list[int]] = {}
    for i, g in enumerate(grams):
        by_shape.setdefault(tuple(g.shape), []).append(i)
    for idx in by_shape.values():
        eig = torch.linalg.eigvalsh(torch.stack([grams[i] for i in idx]))
        for i, value in zip(idx, eig.clamp_min(0).sqrt().sum(-1).tolist()):
            out[i] = value
    return out


def saliency(weight: torch.Tensor) -> float:
    """Synaptic saliency sum |dR/dW * W| of a weight whose .grad holds dR/dW."""
    return float((weight.grad * weight.detach()).abs().sum())


_SCORED = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight", "head.fc.weight")


class DSSScore:
    name = "dss"

    def __init__(self, space: SearchSpace, seed: int = 0, batch_size: int = 1):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.supernet = Supernet(space).eval()
        with torch.no_grad():
            for p in self.supernet.parameters():
                p.abs_()
        self.x = torch.randn(batch_size, space.in_chans, space.img_size, space.img_size, generator=generator)
        self._weight_nuc: dict[tuple, float] = {}

    def __call__(self, arch: Arch) -> float:
        model = self.supernet.extract(arch).eval()
        for name, param in model.named_parameters():  # only the scored weights need dR/dW
            param.requires_grad_(name.endswith(_SCORED))
        model(self.x).sum().backward()
        positions = [(si, li) for si, layers in enumerate(self.supernet.layer_indices(arch)) for li in layers]
        blocks = [b for stage in model.stages for b in stage]
        keys, weights, grads = [], [], []
        score = 0.0
        for (si, li), block in zip(positions, blocks):
            qkv, proj = block.attn.qkv.weight, block.attn.proj.weight
            for name, w, g in (*zip("qkv", qkv.chunk(3), qkv.grad.chunk(3)), ("proj", proj, proj.grad)):
                keys.append((si, li, name, tuple(w.shape)))
                weights.append(w)
                grads.append(g)
            score += saliency(block.mlp.fc1.weight) + saliency(block.mlp.fc2.weight)
        missing = [i for i, k in enumerate(keys) if k not in self._weight_nuc]
        for i, value in zip(missing, nuclear_norms([weights[i] for i in missing])):
            self._weight_nuc[keys[i]] = value
        for key, grad_nuc in zip(keys, nuclear_norms(grads)):
            score += grad_nuc * self._weight_nuc[key]
        return score + saliency(model.head.fc.weight)
