"""`deployvit tables`: every latency table the resolver can see, and which one search would pick."""

from __future__ import annotations

import click

from deployvit.commands import bounds
from deployvit.errors import DeployvitError
from deployvit.runtime_registry import help_text as runtime_help
from deployvit.settings import PRECISIONS


@click.command("tables")
@click.option("--device", help="Show the pick for this target device (a label, or cuda[:N]); default as search (this machine's GPU, "
                               "else the default target).")
@click.option("--runtime", help=runtime_help("Show the pick among tables of this runtime only: "))
@click.option("--precision", type=click.Choice(PRECISIONS), help="Show the pick among this precision only.")
@click.option("--batch-size", type=bounds.BATCH, help="Show the pick among this batch size only.")
@click.option("--space", "space_name", help="With --budget: the space.")
@click.option("--budget", is_flag=True, help="Print only a latency budget in the (log) middle of --space's span under the table "
                                             "search would use, e.g. `134us`: what a script passes to search --latency and export --budget.")
def tables_cmd(device, runtime, precision, batch_size, space_name, budget) -> None:
    """List the user's (./latency_tables, $DEPLOYVIT_HOME/latency_tables) and the shipped latency
    tables, and for each space which one `search` would use on this machine, or the estimate it
    would build on demand."""
    from deployvit.latency.resolve import Machine, TableQuery, default_target_line, scan_tables, table_dirs
    from deployvit.spaces import PRESETS

    if budget or space_name:
        return click.echo(middle_budget(space_name, device, runtime, precision, batch_size, budget))

    try:
        dirs = table_dirs()
        infos, skipped = scan_tables(dirs)
    except OSError as exc:  # an unreadable folder ($DEPLOYVIT_HOME without permission): one line, exit 2
        where = exc.filename if exc.filename is not None else "a latency tables folder"
        raise DeployvitError(f"cannot read {where}: {exc.strerror or exc} (the latency tables folders: ./latency_tables, "
                             "$DEPLOYVIT_HOME/latency_tables)") from None
    machine = Machine.detect(device)
    click.echo(f"this machine: {machine.name} ({machine.device_type}); looking in " + ", ".join(f"{o}: {p}" for o, p in dirs))
    target = default_target_line(TableQuery("", "", device, runtime, precision, batch_size), machine, None)
    if target:
        click.echo(f"{target}; a table measured on this machine comes first")
    click.echo(format_rows(infos))
    for note in skipped:
        click.echo(f"note: {note}")
    spaces = {(s.name, s.hash()) for s in PRESETS.values()} | {(i.meta["space"], i.meta["space_hash"]) for i in infos}
    for space, space_hash in sorted(spaces):
        click.echo(would_use(TableQuery(space, space_hash, device, runtime, precision, batch_size), infos, machine))


def middle_budget(space_name: str | None, device, runtime, precision, batch_size, flag: bool) -> str:
    """`tables --space S --budget`: the log middle of the space's latency span under the table search
    would use (where a budget binds: near the top every arch fits, near the bottom few do)."""
    import math

    from deployvit.errors import DeployvitError
    from deployvit.latency.resolve import TableQuery, resolve_table
    from deployvit.search.predictor import MetricModel
    from deployvit.spaces import get_space

    if not (space_name and flag):
        raise DeployvitError("--budget and --space go together: deployvit tables --space SPACE --budget")
    space = get_space(space_name)
    table = resolve_table(TableQuery(space.name, space.hash(), device, runtime, precision, batch_size), space=space).table
    lo, hi = MetricModel(space, table).range("latency")
    return compact_budget(math.sqrt(lo * hi))


def compact_budget(us: float) -> str:
    """A budget as a latency option takes it, three significant digits: `134us`, `2.5ms`."""
    return f"{float(f'{us / 1e3:.3g}'):g}ms" if us >= 1000 else f"{float(f'{us:.3g}'):g}us"


def would_use(query, infos, machine) -> str:
    """One line: the table `search --space S` would use, the estimate it would build on demand, or why it would stop."""
    from deployvit.errors import DeployvitError
    from deployvit.latency.resolve import NothingFits, choose, estimate_cache_dir, on_demand_target

    head = f"search --space {query.space}"
    try:
        picked = choose(query, infos, machine)
        return f"{head} would use: {picked.path} ({picked.reason})"
    except NothingFits as exc:
        target = on_demand_target(query, machine)
        if target is None:
            return f"{head} would stop: {exc}"
        gpu, runtime, precision, batch = target
        return (f"{head} would build an ESTIMATE on demand: {gpu} {runtime} {precision} batch {batch} "
                f"(no measured table fits; cached in {estimate_cache_dir()})")
    except DeployvitError as exc:
        return f"{head} would stop: {exc}"


COLUMNS = ("origin", "space", "device", "detected name", "runtime", "prec", "batch", "source", "made", "MAPE %", "within 10%", "path")
#: for an estimate, "MAPE %" is its median error on held-out published measurements (leave one GPU out)


def format_rows(infos) -> str:
    """A fixed-width table of the tables; validation columns are '-' where a table has none."""
    rows = [COLUMNS]
    for i in infos:
        m, cal = i.meta, i.table.validation.get("calibrated", {})
        mape, within = cal.get("mape"), cal.get("within_10")
        if i.source == "estimated":  # its error on held-out published measurements, not on archs timed here
            mape = i.estimate_error
            within = None
        rows.append((
            i.origin, m["space"], m["device_label"], m["device_name"], m["runtime"], m["precision"], str(m["batch_size"]),
            i.source, str(m.get("date", "-"))[:10],
            f"{mape:.1f}" if isinstance(mape, (int, float)) else ("unvalidated" if i.source == "estimated" else "-"),
            f"{within:.0%}" if isinstance(within, (int, float)) else "-",
            str(i.path),
        ))
    widths = [max(len(r[c]) for r in rows) for c in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)
