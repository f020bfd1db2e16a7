"""`deployvit latency`: predict an arch's latency from a table and optionally measure it here."""

from __future__ import annotations

import warnings

import click

from deployvit.arch import load_arch
from deployvit.latency.table import LatencyTable, LatencyTableWarning, default_table


@click.command("latency")
@click.argument("arch_file", type=click.Path(dir_okay=False))
@click.option("--table", "table_path", type=click.Path(dir_okay=False), help="Latency table (default: the shipped table for the arch's space).")
@click.option("--measure", is_flag=True, help="Also time the arch on this machine with the table's runtime, precision and batch.")
def latency_cmd(arch_file: str, table_path: str | None, measure: bool) -> None:
    """Print the table's calibrated latency prediction for ARCH_FILE (and the measured one)."""
    arch = load_arch(arch_file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LatencyTableWarning)
        table = LatencyTable.load(table_path or default_table(arch.space))
        predicted = table.predict(arch)
    for w in caught:
        if issubclass(w.category, LatencyTableWarning):
            click.echo(f"deployvit: warning: {w.message}", err=True)
    click.echo(f"table:     {table.path} ({table.describe()})")
    mape = table.validation.get("calibrated", {}).get("mape")
    quality = f" (table validation MAPE {mape:.1f}%)" if isinstance(mape, (int, float)) else ""
    click.echo(f"predicted: {predicted / 1e3:.3f} ms{quality}")
    if not measure:
        return
    from deployvit.latency.devices import device_name  # torch: only when measuring
    from deployvit.latency.profile import apply_threads, measure_arch, table_settings

    settings, device = table_settings(table.metadata)
    apply_threads(settings, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        timing = measure_arch(arch, settings, device)
    for w in caught:
        click.echo(f"deployvit: warning: {w.message}", err=True)
    error = (predicted - timing.median_us) / timing.median_us * 100
    click.echo(
        f"measured:  {timing.median_us / 1e3:.3f} ms median (p90 {timing.p90_us / 1e3:.3f} ms, cv {timing.cv:.1%}, "
        f"{timing.repeats} repeats, {settings.clock} clock) on {device_name(device)}, {settings.runtime} {settings.precision} batch {settings.batch_size}"
    )
    click.echo(f"error:     {error:+.1f}% (prediction vs measurement)")
