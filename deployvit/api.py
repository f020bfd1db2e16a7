"""`deployvit.profile(...)` and `deployvit.export(...)`: the commands as functions (README "Python API").

Each takes the command's options by their names (`batch_size`, `calib_archs`, `dynamic_batch`, ...)
and starts from the command's own defaults, read from its click options (the one place they are
written), each value checked by the option's own type and range. `deployvit.search` is
`deployvit.search.api.search`.
"""

from __future__ import annotations

import contextlib
import io as _io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from deployvit.errors import DeployvitError


def _options(command: click.Command, given: dict[str, Any], fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The command's options: its defaults, overridden by `given` (each converted and range-checked by
    the option's click type, as on the command line); unknown names are a TypeError naming the known."""
    params = {p.name: p for p in command.params if isinstance(p, click.Option)}
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise TypeError(f"{command.name}() got unexpected argument(s) {', '.join(unknown)} (options: {', '.join(sorted(params))})")
    ctx = click.Context(command)
    values = {name: _default(p, ctx) for name, p in params.items()}
    for name, value in given.items():
        if value is None:
            continue
        try:
            values[name] = params[name].type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise DeployvitError(f"{name}={value!r}: {exc.message}") from None
    return {**values, **(fixed or {})}


_UNSET = getattr(click.core, "UNSET", None)  # click >= 8.2 marks an option without a default so


def _default(param: click.Option, ctx: click.Context) -> Any:
    value = param.get_default(ctx)
    if value is None or (_UNSET is not None and value is _UNSET):
        return () if param.multiple else (False if param.is_flag else None)
    return value


@dataclass
class ProfileOutcome:
    """The tables a profile wrote (one per batch size) and where."""

    tables: list[Any]  # LatencyTable
    paths: list[Path] = field(default_factory=list)


def profile(device: str, space: str, runtime: str, batch_size: int | list[int] = 1, *, estimate: bool = False,
            echo: Callable[[str], None] | None = print, **options) -> ProfileOutcome:
    """`deployvit profile --device DEVICE --space SPACE --runtime RUNTIME --batch-size B ... [--estimate]`.

    `batch_size`: one or a list (one table each). `options`: the command's other options by name
    (precision, out, calib_archs, val_archs, warmup_s, repeats, threads, clock, seed, force), with its
    defaults. `estimate=True` writes the ESTIMATE for a catalogue GPU (seconds, anywhere). Returns the
    tables and their paths."""
    from deployvit.commands.profile import output_paths, profile_cmd
    from deployvit.latency.table import LatencyTable

    batches = tuple([batch_size] if isinstance(batch_size, int) else batch_size)
    opts = _options(profile_cmd, options, {"label": device, "space_name": str(space), "runtime": runtime, "batches": batches,
                                           "estimate": estimate})
    with _echoing(echo):
        profile_cmd.callback(**opts)
    from deployvit.latency.estimate import resolve_gpu
    from deployvit.spaces import get_space

    label = resolve_gpu(device).key if estimate else device
    paths = output_paths(opts["out"], label, get_space(space).name, runtime, opts["precision"], batches, estimated=estimate)
    return ProfileOutcome([LatencyTable.load(p, warn=False) for p in paths], paths)


def export(arch: str | Path | None = None, format: str = "onnx", *, echo: Callable[[str], None] | None = print, **options):
    """`deployvit export --arch ARCH --format FORMAT ...`: export, verify against PyTorch fp32, time,
    check the latency contract. `arch`: an arch JSON or a run folder (a search run: its winner; a
    retrain run: the trained model). `options`: the command's other options by name (checkpoint,
    precision, batch_size, dynamic_batch, data, samples, budget, table, out, device, ...), with its
    defaults. Returns an `ExportOutcome` (report, output folder, artifact, and `failure`: why it
    fails its checks, the command's exit 1; None when it passed)."""
    from deployvit.commands.export import export as export_cmd
    from deployvit.commands.export import run_export

    fmt_param = next(p for p in export_cmd.params if p.name == "fmt")
    fmt = fmt_param.type_cast_value(click.Context(export_cmd), format)
    opts = _options(export_cmd, {**options, "arch_path": None if arch is None else str(arch)})
    opts.pop("fmt", None)
    with _echoing(echo):
        return run_export(opts, fmt)


@contextlib.contextmanager
def _echoing(echo: Callable[[str], None] | None):
    """The command's printed lines to `echo` (None: nowhere), as the CLI would print them."""
    if echo is print:
        yield
        return
    buffer = _io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        (echo or (lambda *_: None))(line)
