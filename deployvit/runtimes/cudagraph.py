"""cudagraph: the module captured once as a CUDA graph and replayed, so a timing has no per-kernel
launch cost. The latency tables' `cudagraph` entries and the export format of that name replay
through the same `capture_cuda_graph`, so they run the same graph."""

from __future__ import annotations

from typing import Callable

import torch

from deployvit.runtimes.base import TorchRuntime


def capture_cuda_graph(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Capture one forward of `module` on `x` as a CUDA graph (after warm-up on a side stream, as torch
    requires) and return its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(3):
            module(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        out = module(x)

    static = (x, out)  # the graph reads x's memory and writes out's: the closure keeps both alive

    def replay() -> torch.Tensor:
        graph.replay()
        return static[1]

    replay.graph = graph
    return replay


class CudaGraph(TorchRuntime):
    def wrap(self, module, x):
        return capture_cuda_graph(module, x)

    def runner(self, model, precision, device):
        """PyTorch replayed as a CUDA graph (one per input shape, captured on first use), float32 in
        and out. Each call copies the input into the graph's static buffer, replays, and returns a
        copy of the output, so a later call cannot overwrite what an earlier one returned."""
        return _GraphRunner(self.export_module(model, precision, device), device)


class _GraphRunner:
    def __init__(self, net: torch.nn.Module, device: str):
        self.net, self.device = net, device
        self.graphs: dict[tuple[int, ...], tuple[torch.Tensor, Callable[[], torch.Tensor]]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if tuple(x.shape) not in self.graphs:
            static = x.clone()
            self.graphs[tuple(x.shape)] = (static, capture_cuda_graph(self.net, static))
        static, replay = self.graphs[tuple(x.shape)]
        static.copy_(x)
        return replay().clone()
