"""The yardstick CPU costs are stated in: one DeiT-Tiny forward + backward at 224 px, batch 1, fp32,
on one thread of this machine (the issue's unit: a search on 2 cores must finish within 400 of
them). Machines here differ by 2x, so a cost in yardsticks travels between machines where seconds
do not."""

from __future__ import annotations

import statistics
import time

import torch


def deit_tiny_step(repeats: int = 5) -> dict:
    """Median process CPU time and wall time (s) of one DeiT-Tiny forward+backward on one thread,
    after one warm-up step."""
    from deployvit.models import build_model
    from deployvit.spaces import get_space, reference_archs

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(reference_archs(get_space("vit-tiny"))["DeiT-Ti"]).train()
        x = torch.randn(1, 3, 224, 224)
        cpu, wall = [], []
        for i in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            c0, w0 = time.process_time(), time.perf_counter()
            model(x).sum().backward()
            if i:  # the first step allocates and warms up
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - w0)
    finally:
        torch.set_num_threads(previous)
    return {"what": "DeiT-Ti forward+backward, 224 px, batch 1, fp32, 1 thread", "repeats": repeats,
            "cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall)}
