"""eager: the PyTorch module as it is. On a GPU at small batch this is launch bound and cannot rank
archs (docs/DESIGN.md section 4): it is kept for contrast, and as the reference every export is verified
against (the fp32 eager model)."""

from __future__ import annotations

from deployvit.runtimes.base import TorchRuntime


class Eager(TorchRuntime):
    def wrap(self, module, x):
        return lambda: module(x)

    def is_reference(self, spec) -> bool:
        return spec.precision == "fp32"
