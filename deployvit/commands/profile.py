"""`deployvit profile`: measure a calibrated, validated latency table per batch size on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from deployvit import io
from deployvit.commands import bounds
from deployvit.errors import DeployvitError
from deployvit.runtime_registry import help_text as runtime_help
from deployvit.settings import MeasureSettings, ProfileConfig
from deployvit.latency.table import table_filename
from deployvit.spaces import get_space


def output_paths(out: str | None, label: str, space: str, runtime: str, precision: str, batches: tuple[int, ...], estimated: bool = False,
                 calibrated: bool = False) -> list[Path]:
    """One table path per batch size: `--out` as given (with `{batch}` filled in when several batch
    sizes are profiled), else `$DEPLOYVIT_HOME/latency_tables/<label>/<space>-<runtime>-<precision>-b<batch>[-estimated|-calibrated].json`,
    where every command's table resolver looks (`deployvit.latency.resolve`), from any directory."""
    if out is None:
        from deployvit.latency.resolve import user_tables_dir

        root = user_tables_dir()
        return [root / label / table_filename(space, runtime, precision, b, estimated, calibrated) for b in batches]
    if len(batches) > 1 and "{batch}" not in out:
        raise DeployvitError("several --batch-size values need '{batch}' in --out (e.g. --out tables/tiny-b{batch}.json)")
    # '' is no file; an over-long name, a folder or a FIFO in the way: one line before any timing
    return [io.check_out_path(out.replace("{batch}", str(b)) if out.strip() else out, "--out") for b in batches]


@click.command("profile")
@click.option("--device", "label", required=True,
              help="Device label (a100, h100, h200, l4, t4, a10, rtx4090, orin, cpu, or your own name); with --estimate, a GPU catalogue entry.")
@click.option("--space", "space_name", required=True, help="Search space preset or YAML/JSON file.")
@click.option("--runtime", required=True, help=runtime_help())
@click.option("--precision", default="fp16", show_default=True, help="fp32, fp16 or bf16.")
@click.option("--batch-size", "batches", type=bounds.BATCH, multiple=True, required=True, help="Batch size; repeat for several tables.")
@click.option("--out", help="Table path (default $DEPLOYVIT_HOME/latency_tables/LABEL/SPACE-RUNTIME-PRECISION-bB.json, where search "
                                 "looks; DEPLOYVIT_HOME defaults to ~/.local/share/deployvit); '{batch}' is replaced.")
@click.option("--calib-archs", type=bounds.ints(2, 1000), default=ProfileConfig.calib_archs, show_default=True,
              help="Whole archs timed to fit the calibration.")
@click.option("--val-archs", type=bounds.ints(2, 10_000), default=ProfileConfig.val_archs, show_default=True,
              help="Held-out archs timed to validate the table.")
@click.option("--warmup", "warmup_s", type=bounds.WARMUP_S, default=MeasureSettings.warmup_s, show_default=True,
              help="Warm-up seconds before the timing rounds (every part and arch called in turn).")
@click.option("--repeats", type=bounds.REPEATS, default=MeasureSettings.repeats, show_default=True,
              help="Timed calls per part and per arch, at least.")
@click.option("--rounds", type=bounds.ints(1, 10_000), default=MeasureSettings.rounds, show_default=True,
              help="Interleaved timing rounds, at least (13: the fewest for a 95%% interval of the lower quartile).")
@click.option("--round-time", "round_s", type=bounds.floats(0, 600), default=MeasureSettings.round_s, show_default=True,
              help="Seconds each round lasts, at least (every part and arch called again and again, its fastest call kept).")
@click.option("--max-time", "max_s", type=bounds.floats(0, 86_400), default=MeasureSettings.max_s, show_default=True,
              help="Seconds of further rounds, at most, while a latency's 95%% interval is wider than +-2%% (0: exactly --rounds).")
@click.option("--threads", type=bounds.THREADS, help="CPU threads for torch and the runtime's own pool (recorded; default: library default).")
@click.option("--clock", type=click.Choice(["auto", "wall", "cpu"]), default="auto", show_default=True,
              help="CPU only: 'cpu' times process CPU time (needs --threads 1), far less sensitive to other jobs on a shared machine; "
                   "auto: 'cpu' on the CPU with --threads 1, else the wall clock (CUDA events on a GPU).")
@click.option("--seed", type=bounds.SEED, default=ProfileConfig.seed, show_default=True, help="Seed of the calibration/validation arch samples.")
@click.option("--force", is_flag=True, help="Profile despite a device-label mismatch, and overwrite an existing table.")
@click.option("--estimate", is_flag=True, help="Measure nothing: write an ESTIMATED table for the GPU model --device names "
              "(a catalogue entry), from a per-kernel model fitted on published measurements; runs anywhere in seconds.")
@click.option("--calibrate", "calibrate_k", type=bounds.ints(2, 10_000),
              help="Measure only K whole archs here (spread over the space's latency range; 10 is a good start) and fit them onto "
                   "a table made elsewhere (--base; on a GPU, deployvit's estimate for it): a CALIBRATED table in minutes, validated "
                   f"on --val-archs more (default {ProfileConfig.calibrate_val_archs}).")
@click.option("--base", "base_path", type=click.Path(dir_okay=False),
              help="--calibrate: the table to calibrate (same space, runtime, precision and batch; default: the best such table "
                   "of this device class the resolver sees, else on a GPU its estimate).")
def profile_cmd(label, space_name, runtime, precision, batches, out, calib_archs, val_archs, threads, clock, seed, force, estimate,
                calibrate_k, base_path, **timing) -> None:
    """Time every block shape of a space, calibrate on whole archs, validate on held-out archs, and
    write the latency table (resumable: rerun the same command after an interruption). With
    --estimate, write a clearly labelled estimate for a catalogue GPU instead; with --calibrate K,
    fit K whole-arch measurements onto a table made elsewhere."""
    io.safe_component(label, "device label", 64)  # before the default table folder is made (devices.check_label's check)
    if estimate:
        return _estimate(label, space_name, runtime, precision, batches, out, force)
    _offer_estimate(label, space_name, runtime, precision, batches)
    space = get_space(space_name)
    clock = default_clock(label, threads) if clock == "auto" else clock
    settings = [MeasureSettings(runtime, precision, b, threads=threads, clock=clock, **timing) for b in batches]
    if len(set(batches)) < len(batches):
        raise DeployvitError(f"--batch-size given twice: {sorted(batches)}")
    if calibrate_k is not None:
        return _calibrate(space, label, settings, out, calibrate_k, val_archs, base_path, seed, force)
    from deployvit.latency.profile import check_request, profile, progress_path  # torch and timm: only when it runs

    paths = output_paths(out, label, space.name, runtime, precision, batches)
    for s, path in zip(settings, paths):  # every table checked before the first is timed
        check_request(label, s, path, calib_archs, val_archs, force)
    tables = []
    for s, path in zip(settings, paths):
        with io.output_dir(path.parent, keep=lambda d, path=path: _resumable(path)):
            try:
                with io.output_lock(path, "--out"):  # a second profile of this table: one line (its progress file is this one's)
                    tables.append(profile(space, label=label, settings=s, out=path, calib_archs=calib_archs, val_archs=val_archs,
                                          seed=seed, force=force, echo=click.echo))
            except BaseException:
                if not _resumable(path):  # a progress file without a timing resumes nothing
                    progress_path(path).unlink(missing_ok=True)
                raise
    click.echo(f"next: `{search_command(space, label, tables[0])}`")


def _calibrate(space, label: str, settings: list, out: str | None, k: int, val_archs: int, base_path: str | None, seed: int,
               force: bool) -> None:
    """`--calibrate K`: every request (base table, sizes, outputs) checked before anything is timed."""
    from deployvit.latency.calibrate import calibrate, plan_calibration
    from deployvit.latency.profile import progress_path

    val = val_archs if click.get_current_context().get_parameter_source("val_archs") != click.core.ParameterSource.DEFAULT \
        else ProfileConfig.calibrate_val_archs
    first = settings[0]
    paths = output_paths(out, label, space.name, first.runtime, first.precision, tuple(s.batch_size for s in settings), calibrated=True)
    plans = [plan_calibration(space, label, s, path, k, val, base_path, seed, force) for s, path in zip(settings, paths)]
    tables = []
    for plan in plans:
        with io.output_dir(plan.out.parent, keep=lambda d, path=plan.out: _resumable(path)):
            try:
                tables.append(calibrate(plan, echo=click.echo))
            except BaseException:
                if not _resumable(plan.out):
                    progress_path(plan.out).unlink(missing_ok=True)
                raise
    click.echo(f"next: `{search_command(space, label, tables[0])}`")


def default_clock(label: str, threads: int | None) -> str:
    """`--clock auto`: process CPU time for a one-thread CPU profile (what it costs, whatever the
    neighbours do; equal to wall latency on an idle machine), else the wall clock."""
    return "cpu" if label == "cpu" and threads == 1 else "wall"


def search_command(space, label: str, table) -> str:
    """The search that uses `table`, under a budget in the (log) middle of the space's latencies on it
    (what `deployvit tables --space S --budget` prints)."""
    import math

    from deployvit.commands.tables import compact_budget
    from deployvit.search.predictor import MetricModel

    lo, hi = MetricModel(space, table).range("latency")
    m = table.metadata
    return (f"deployvit search --space {space.name} --device {label} --runtime {m['runtime']} --precision {m['precision']} "
            f"--batch-size {m['batch_size']} --latency {compact_budget(math.sqrt(lo * hi))}")


def _resumable(table: Path) -> bool:
    """Whether a failed profile leaves timings a rerun resumes from (its progress file)."""
    from deployvit.latency.profile import progress_path

    try:
        state = io.read_json(progress_path(table), "profile progress file")
    except DeployvitError:
        return False
    return isinstance(state, dict) and any(isinstance(state.get(g), dict) and state[g] for g in ("rounds", "timings"))


def _offer_estimate(label: str, space: str, runtime: str, precision: str, batches: tuple[int, ...]) -> None:
    """A catalogue GPU named on a machine without CUDA cannot be measured here, but it can be
    estimated: one line with the `--estimate` command (runnable as printed), with or without --force."""
    import torch

    if label == "cpu" or torch.cuda.is_available():
        return
    from deployvit.latency.estimate import ESTIMATED_RUNTIMES
    from deployvit.latency.gpus import load_catalogue

    try:
        gpu = load_catalogue().get(label)
    except DeployvitError:
        return  # a label of the user's own: check_label says what it finds here
    if runtime not in ESTIMATED_RUNTIMES:
        raise DeployvitError(f"no CUDA GPU here to measure {gpu.name} on, and the estimator does not cover runtime {runtime}: "
                             "measure it on that GPU")
    batch_flags = " ".join(f"--batch-size {b}" for b in batches)
    cmd = f"deployvit profile --device {label} --space {space} --runtime {runtime} --precision {precision} {batch_flags} --estimate"
    raise DeployvitError(f"no CUDA GPU here to measure {gpu.name} on: `{cmd}` writes an ESTIMATED table for it instead "
                         "(search and the other commands build that estimate on demand without it)")


def _estimate(label: str, space_name: str, runtime: str, precision: str, batches: tuple[int, ...], out: str | None, force: bool) -> None:
    from deployvit.latency.estimate import check_request, estimate_table
    from deployvit.latency.gpus import load_catalogue

    gpu = load_catalogue().get(label)
    space = get_space(space_name)
    if len(set(batches)) < len(batches):
        raise DeployvitError(f"--batch-size given twice: {sorted(batches)}")
    paths = output_paths(out, gpu.key, space.name, runtime, precision, batches, estimated=True)
    for b, path in zip(batches, paths):  # everything checked before the first table is written
        check_request(runtime, precision, b, gpu)
        if path.is_dir():
            raise DeployvitError(f"output {path} is a directory; give a .json file path")
        if path.exists() and not force:
            raise DeployvitError(f"{path} exists; pass --force to overwrite it")
    for b, path in zip(batches, paths):
        table = estimate_table(space, gpu, runtime, precision, b)
        with io.output_dir(path.parent):
            table.save(path)
        own = table.validation["this_table"]
        held = own["leave_one_gpu_out"]
        quality = (f"held-out median error {held['median_abs_pct']:.1f}% (leave one GPU out, n={held['n']})" if held else own["status"])
        click.echo(f"wrote {path}: {table.describe()}; {len(table.entries)} part entries; {quality}")
    click.echo(f"next: `{search_command(space, gpu.key, table)}`")
