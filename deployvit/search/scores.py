"""Architecture scores for search: higher is better.

`DSSScore` is deployvit's reading of the TF-TAS DSS-indicator (docs/REFERENCES.md sections 3 and 7):
random supernet weights made absolute, one fixed-seed Gaussian batch, R = sum of logits, one
backward; score = sum over attention weights (q, k, v and the output projection, each its own
matrix) of ||dR/dW||_nuc * ||W||_nuc + sum over MLP weights (fc1, fc2) and the classifier (once) of
sum |dR/dW * W|. Patch embedding excluded. Weights are the subnet's own slices of one seeded
supernet, so archs are scored on consistent weights, and each weight's nuclear norm is computed once
per (position, slice) and cached. Nuclear norms come from the eigenvalues of the smaller Gram matrix
in float64, several times cheaper than an SVD at these sizes and exact up to rounding.
"""

from __future__ import annotations

import copy
import queue
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import torch

from deployvit.arch import Arch
from deployvit.spaces import SearchSpace
from deployvit.supernet import Supernet

if TYPE_CHECKING:
    from deployvit.search import ScoreInputs


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


_BLOCK_SCORED = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
_SCORED = (*_BLOCK_SCORED, "head.fc.weight")  # names in a standalone ViT


class DSSScore:
    """The DSS indicator of an arch (module docstring), on `device`.

    Speed without changing the number: on the CPU each evaluation runs with one intra-op thread and
    `threads` evaluations run side by side (whole archs, each on its own replica of the seeded
    supernet). At batch 1 and ~200 tokens the matmuls and the 52 small float64 eigensolves of an arch
    scale poorly across OpenMP threads, and on a loaded machine OpenMP's spinning made a 2-thread
    eigensolve ~40x more CPU-expensive than a 1-thread one; independent archs scale ~linearly. One
    thread per evaluation also makes every score independent of the thread count, so a torchrun rank
    computes bit for bit what a single process computes. `reference()` is the previous, sequential
    evaluation, kept for the equality test and the benchmark.
    """

    name = "dss"

    def __init__(self, space: SearchSpace, seed: int = 0, batch_size: int = 1,
                 device: torch.device = torch.device("cpu"), threads: int | None = None):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        supernet = Supernet(space).eval()  # built on the CPU: the same weights whatever the device
        with torch.no_grad():
            for p in supernet.parameters():
                p.abs_()
        self.device = torch.device(device)
        self.supernet = supernet.to(self.device)
        x = torch.randn(batch_size, space.in_chans, space.img_size, space.img_size, generator=generator)
        self.x = x.to(self.device)
        self._weight_nuc: dict[tuple, float] = {}
        if threads is None:
            threads = min(torch.get_num_threads(), evaluations_that_fit(supernet)) if self.device.type == "cpu" else 1
        self.threads = max(1, int(threads))
        self._replicas: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(self.threads):
            self._replicas.put(self.supernet if i == 0 else copy.deepcopy(self.supernet))

    def __call__(self, arch: Arch) -> float:
        return self.score_many([arch])[0]

    def score_many(self, archs: list[Arch]) -> list[float]:
        """Scores of `archs`, in order; up to `threads` evaluated at once."""
        if self.device.type != "cpu" or self.threads == 1 or len(archs) <= 1:
            with _intra_op_threads(1 if self.device.type == "cpu" else torch.get_num_threads()):
                return [self._evaluate(arch) for arch in archs]
        with ThreadPoolExecutor(min(self.threads, len(archs)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(self._evaluate, archs))

    def _evaluate(self, arch: Arch) -> float:
        supernet = self._replicas.get()  # a replica of its own: set_arch() sets the supernet's arch
        try:
            supernet.set_arch(arch)
            with torch.no_grad():  # the subnet's slices as leaves of their own: dR/dW has the subnet's shapes
                weights = [{k: v.detach().requires_grad_(k.endswith(_BLOCK_SCORED)) for k, v in part.items()}
                           for part in supernet.part_weights()]
                weights[-1]["fc.weight"].requires_grad_()  # the classifier
            supernet(self.x, weights).sum().backward()
            blocks = [part for part in weights if "attn.qkv.weight" in part]
            return self._total(blocks, weights[-1], supernet.layer_indices(arch))
        finally:
            self._replicas.put(supernet)

    def _total(self, blocks: list[dict[str, torch.Tensor]], head: dict[str, torch.Tensor],
               layer_indices: list[list[int]]) -> float:
        """The score from the weights of the blocks (in run order) and the head, whose .grad holds dR/dW."""
        positions = [(si, li) for si, layers in enumerate(layer_indices) for li in layers]
        keys, weights, grads = [], [], []
        score = 0.0
        for (si, li), block in zip(positions, blocks, strict=True):
            qkv, proj = block["attn.qkv.weight"], block["attn.proj.weight"]
            for name, w, g in (*zip("qkv", qkv.chunk(3), qkv.grad.chunk(3)), ("proj", proj, proj.grad)):
                keys.append((si, li, name, tuple(w.shape)))
                weights.append(w)
                grads.append(g)
            score += saliency(block["mlp.fc1.weight"]) + saliency(block["mlp.fc2.weight"])
        missing = [i for i, k in enumerate(keys) if k not in self._weight_nuc]
        for i, value in zip(missing, nuclear_norms([weights[i] for i in missing])):
            self._weight_nuc[keys[i]] = value  # same value whichever thread computes it first
        for key, grad_nuc in zip(keys, nuclear_norms(grads)):
            score += grad_nuc * self._weight_nuc[key]
        return score + saliency(head["fc.weight"])

    def reference(self, arch: Arch) -> float:
        """The evaluation as it was before the speed work: a standalone model extracted from the
        shared supernet, on the calling thread with torch's thread setting (for the test and the
        benchmark)."""
        model = self.supernet.extract(arch).eval()
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith(_SCORED))
        model(self.x).sum().backward()
        blocks = [dict(b.named_parameters()) for stage in model.stages for b in stage]
        return self._total(blocks, dict(model.head.named_parameters()), self.supernet.layer_indices(arch))


#: memory one DSS evaluation side by side with others costs, in multiples of the supernet's weights:
#: its replica, the gradients of the subnet's slices, activations and float64 Gram matrices
#: (`benchmarks/family_dss_cost.py`: 13.2 GB peak for vit-huge's 3.2 GB of weights, one evaluation)
EVALUATION_MEMORY = 4.0


def available_memory() -> int | None:
    """Bytes the OS says a new allocation can get without swapping (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def evaluations_that_fit(supernet: torch.nn.Module) -> int:
    """How many DSS evaluations can run side by side in the memory available now (at least 1): on a
    CPU the big ViT families' supernets are GBs, and a second replica would swap or be killed."""
    free = available_memory()
    weights = sum(p.numel() * p.element_size() for p in supernet.parameters())
    if free is None or weights == 0:
        return 1 << 16
    return max(1, int(free // (EVALUATION_MEMORY * weights)))


@contextmanager
def _intra_op_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def dss_score(inputs: "ScoreInputs") -> DSSScore:
    """The `dss` score (`deployvit.search.SCORES`): DSS on the search's seed and device."""
    return DSSScore(inputs.space, seed=inputs.seed, device=inputs.device)


def score_batch(score: Score, archs: list[Arch]) -> list[float]:
    """Scores of `archs` in order: through the score's own `score_many` where it has one (threaded
    DSS, the torchrun-sharded wrapper), else one call per arch."""
    many = getattr(score, "score_many", None)
    return [float(v) for v in many(archs)] if many is not None else [float(score(a)) for a in archs]
