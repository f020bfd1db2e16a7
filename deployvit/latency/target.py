"""The target a latency is predicted for when the user names none: one place (`DefaultTarget`).

No torch import here: `deployvit search --help` and the Python API's defaults read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DefaultTarget:
    """Where deployvit's latencies are predicted for when nothing says otherwise.

    - **No GPU here, no `--device`: an NVIDIA L4, TensorRT, fp16, batch 64.** The L4 is the cloud
      inference GPU people serve ViTs on (GCP G2, AWS G6, Azure); TensorRT fp16 is how such a
      service runs a ViT; batch 64 is throughput serving, the regime in which the latency of a model
      follows its size rather than its kernel count. There, `deployvit search --latency 5ms` is a
      real question: the estimate puts `vit-tiny` at about 3.0-8.6 ms, so 5 ms binds in the cheapest
      family, whose training-free score (DSS) a CPU evaluates in well under a second per arch.
      The H100 at batch 1 (the previous default) made every family's span sub-millisecond to 2 ms:
      5 ms admitted every arch and the budget chose nothing.
    - **A GPU here, no `--device`:** that GPU, with the same runtime, precision and batch (its
      measured tables when there are any, else its estimate).
    - **`--device X` without `--batch-size`:** batch `device_batch` (1), the usual latency question
      about a named device; runtime and precision as above.

    `--device`, `--runtime`, `--precision` and `--batch-size` change each field; a table measured
    on this machine is used before any of this (`deployvit.latency.resolve`)."""

    device: str = "l4"
    runtime: str = "tensorrt"
    precision: str = "fp16"
    batch_size: int = 64
    device_batch: int = 1  # the batch when --device names a device and --batch-size is not given

    def batch_for(self, device: str | None) -> int:
        """The batch size when none is given: `batch_size` for the default device, `device_batch`
        when the user named one."""
        return self.batch_size if device is None else self.device_batch

    def text(self) -> str:
        return f"{self.device} {self.runtime} {self.precision} batch {self.batch_size}"


DEFAULT_TARGET = DefaultTarget()
#: how the user changes the target, for the line that names a default target
CHANGE_TARGET = "--device, --runtime, --precision, --batch-size"
