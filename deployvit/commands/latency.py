"""`deployvit latency`: predict an arch's latency from a table and optionally measure it here."""

from __future__ import annotations

import click

from deployvit.commands import bounds
from deployvit.runtime_registry import help_text as runtime_help
from deployvit.settings import PRECISIONS

from deployvit.arch import load_arch


@click.command("latency")
@click.argument("arch_file", type=click.Path())
@click.option("--table", "table_path", type=click.Path(dir_okay=False),
              help="Latency table (default: the one `deployvit tables` says search would pick for the arch's space).")
@click.option("--device", help="Target device of the table: a label (h100, a100, cpu, ...) or cuda[:N] (this GPU); "
                               "default: as search (this machine's GPU, else the default target).")
@click.option("--runtime", help=runtime_help("Only tables of this runtime: "))
@click.option("--precision", type=click.Choice(PRECISIONS), help="Only tables of this precision.")
@click.option("--batch-size", type=bounds.BATCH, help="Only tables of this batch size.")
@click.option("--measure", is_flag=True, help="Also time the arch on this machine with the table's runtime, precision and batch.")
def latency_cmd(arch_file: str, table_path: str | None, device, runtime, precision, batch_size, measure: bool) -> None:
    """Print the table's calibrated latency prediction for ARCH_FILE (and the measured one); ARCH_FILE may
    be a run folder."""
    from deployvit.latency.resolve import TableQuery, resolve_table
    from deployvit.spaces import get_space

    from deployvit.runs import arch_file as arch_of

    arch = load_arch(arch_of(arch_file, "ARCH_FILE"))
    space = get_space(arch.space)
    resolved = resolve_table(TableQuery(space.name, space.hash(), device, runtime, precision, batch_size), table_path, space=space)
    table = resolved.table
    for line in resolved.header():
        click.echo(line)
    for message in resolved.warnings:
        click.echo(f"deployvit: warning: {message}", err=True)
    predicted = table.predict(arch)
    kind = "estimated" if table.metadata.get("source") == "estimated" else "predicted"
    mape = table.validation.get("calibrated", {}).get("mape")
    quality = f" (table validation MAPE {mape:.1f}%)" if isinstance(mape, (int, float)) else ""
    click.echo(f"{kind}: {predicted / 1e3:.3f} ms{quality}")
    if measure:
        _measure(arch, table, predicted, kind, _elsewhere(resolved, table_path))


def _elsewhere(resolved, table_path: str | None) -> str | None:
    """Why the table's prediction is not of this machine (the resolver's rule: a CPU table made on
    another machine, e.g. a shipped one, does not predict this CPU), None when it is."""
    from deployvit.latency.resolve import describes_here, machine_for

    m = resolved.table.metadata
    if describes_here(resolved.info, machine_for(m["device_type"])):
        return None
    where = "a shipped table" if resolved.info.origin == "shipped" else f"--table {table_path}" if table_path else str(resolved.info.path)
    return (f"{where} made on another machine ({m['device_name']}, {m['device_label']}): profile here (`deployvit profile`) "
            "or calibrate it in a minute (`deployvit profile ... --calibrate 10`)")


def _measure(arch, table, predicted: float, kind: str, elsewhere: str | None = None) -> None:
    """Time the arch here exactly as the table's entries were timed, and print the error (only when
    the table describes this machine: `elsewhere` says why not)."""
    import warnings

    from deployvit.devices import device_name  # torch: only when measuring
    from deployvit.latency.profile import apply_threads, measure_arch, table_settings

    settings, device = table_settings(table.metadata)
    apply_threads(settings, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        timing = measure_arch(arch, settings, device)
    for w in caught:
        click.echo(f"deployvit: warning: {w.message}", err=True)
    ci = "" if timing.ci_low_us is None else f", 95% interval {timing.ci_low_us / 1e3:.3f}-{timing.ci_high_us / 1e3:.3f} ms"
    click.echo(
        f"measured:  {timing.latency_us / 1e3:.3f} ms (timed like the table{ci}, {timing.rounds} rounds, {settings.clock} clock) on "
        f"{device_name(device)}, {settings.runtime} {settings.precision} batch {settings.batch_size}"
    )
    if elsewhere is not None:
        click.echo(f"error:     not compared: the prediction is of {elsewhere}")
        return
    error = (predicted - timing.latency_us) / timing.latency_us * 100
    click.echo(f"error:     {error:+.1f}% ({kind} vs measurement)")
