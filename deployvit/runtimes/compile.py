"""compile: `torch.compile` (inductor, default mode, static shapes, one whole graph).

torch.compile allows 8 recompilations per function and then silently runs eager code; a profile
compiles every block shape and arch in one process (autoformer-tiny: 18 block shapes, 60 archs), so
each runner starts from a reset compiler cache, its compile is counted by a recording backend, and
every call of `run` is counted as it enters compiled code (`run.compiled`): a runner whose first
call did not run compiled code is refused instead of timed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deployvit.errors import DeployvitError
from deployvit.runtimes.base import Run, TorchRuntime


@dataclass
class CompileRecord:
    """What torch.compile did for one runner: graphs the inductor backend compiled, and calls that
    entered compiled code (the eager fallback never reaches the backend's callable)."""

    graphs: int = 0
    calls: int = 0


def compiled_runner(module: nn.Module, x: torch.Tensor) -> Run:
    """`torch.compile(module)` on `x`, compiled now, proven to run compiled code.

    The compiler's caches are reset first, so this module's compile is never the one past dynamo's
    recompile limit (which would run eager code without a word); `fullgraph=True` makes a graph break
    an error instead of a partly eager model. Resetting makes earlier compiled runners compile again
    on their next call: build a runner, time it, then build the next (as every caller does)."""
    import torch._dynamo

    torch._dynamo.reset()
    record = CompileRecord()
    inductor = torch._dynamo.lookup_backend("inductor")

    def backend(graph_module, example_inputs):
        compiled_fn = inductor(graph_module, example_inputs)
        record.graphs += 1

        def counted(*args):
            record.calls += 1
            return compiled_fn(*args)

        if getattr(compiled_fn, "_boxed_call", False):  # keep the calling convention dynamo expects
            counted._boxed_call = True
        return counted

    compiled = torch.compile(module, backend=backend, dynamic=False, fullgraph=True)
    try:
        with torch.inference_mode():  # the grad mode the timing loop runs in: no recompile there
            compiled(x)
    except Exception as exc:  # dynamo/inductor raise many types; the user needs the first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DeployvitError(f"torch.compile failed on {type(module).__name__} with input {tuple(x.shape)}: {first}") from None
    if record.graphs < 1 or record.calls < 1:
        raise DeployvitError(f"torch.compile ran eager code for {type(module).__name__} with input {tuple(x.shape)}; refusing to time it")

    def run():
        return compiled(x)

    run.compiled = record
    return run


class Compile(TorchRuntime):
    def wrap(self, module, x):
        return compiled_runner(module, x)

    def runner(self, model, precision, device):
        """The compiled model (dynamic shapes as torch.compile decides, compiled on first use)."""
        net = torch.compile(self.export_module(model, precision, device))
        return lambda x: net(x.to(device))
