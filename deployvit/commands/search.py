"""`deployvit search`: the best arch under latency / FLOPs / params budgets (thin: parse, run, print)."""

from __future__ import annotations

import click

from deployvit.commands import bounds, conflicts
from deployvit.runtime_registry import help_text as runtime_help
from deployvit.settings import PRECISIONS
from deployvit.latency.target import DEFAULT_TARGET
from deployvit.errors import CheckFailed, DeployvitError
from deployvit.search.auto import AUTO, DEFAULT_SPACE
from deployvit.search.budgets import Constraints
from deployvit.spaces import FAMILIES, PRESETS
from deployvit.units import format_amount, parse_amount, parse_amounts
from deployvit.search import METHODS, SCORE_ALIASES, SCORES
from deployvit.search.searcher import SearchConfig

DEFAULTS = SearchConfig()  # the search's defaults, one place
_ALIASES = "; ".join(f"{a}: the former spelling of --method {m} --score {s}" for a, (m, s) in SCORE_ALIASES.items())
_SPACES = (f"{AUTO} (per latency budget, the ViT family ({', '.join(FAMILIES)}) whose span on the target contains it; "
           f"without a latency budget {DEFAULT_SPACE}), a preset ({', '.join(p for p in PRESETS if p not in FAMILIES)}, "
           "or a family) or a YAML/JSON space file")
_TARGET = (f"Default: this machine's GPU, else {DEFAULT_TARGET.device} (the default target: {DEFAULT_TARGET.text()}; "
           "deployvit.latency.target)")


def _amount(value: str | None, metric: str, option: str) -> float | None:
    """None when the option is absent; an empty value is an error (units.parse_amount), never "no budget"."""
    return None if value is None else parse_amount(value, metric, option)


@click.command()
@click.option("--latency", help="Latency budget(s), e.g. 5ms or 2ms,3ms,5ms (one winner each).")
@click.option("--flops", help="FLOPs (MACs) budget, e.g. 1.5G.")
@click.option("--params", help="Parameter budget, e.g. 6M.")
@click.option("--min-latency", help="Lower bound on latency (e.g. to fill a budget).")
@click.option("--min-flops", help="Lower bound on FLOPs.")
@click.option("--min-params", help="Lower bound on params.")
@click.option("--space", "space_name", default=AUTO, show_default=True, help=f"Search space: {_SPACES}.")
@click.option("--table", type=click.Path(dir_okay=False),
              help="Latency table JSON (default: chosen by `deployvit tables`' rules: yours, then shipped; measured, then estimated).")
@click.option("--device", help="Target device of the latency: a label or GPU catalogue key (l4, a100, h100, orin, orin-nx, t4, "
                               "cpu, ...) or cuda[:N] for this machine's GPU, which also runs the score (cpu: table and score on "
                               f"the CPU). {_TARGET}. The score runs on CUDA when available.")
@click.option("--runtime", help=runtime_help("Runtime of the latency: ")[:-1] + f". Default: a measured table's, else "
                                                                             f"{DEFAULT_TARGET.runtime}.")
@click.option("--precision", type=click.Choice(PRECISIONS), help=f"Precision of the latency. Default: a measured table's, else "
                                                                   f"{DEFAULT_TARGET.precision}.")
@click.option("--batch-size", type=bounds.BATCH, help=f"Batch size of the latency. Default: {DEFAULT_TARGET.batch_size} for the default "
                                                      f"target, {DEFAULT_TARGET.device_batch} when --device names one.")
@click.option("--method", type=click.Choice(METHODS.names()), default=DEFAULTS.method, show_default=True,
              help=f"How archs are chosen to score. {METHODS.describe()}.")
@click.option("--score", type=click.Choice([*SCORES, *SCORE_ALIASES]), default=None,
              help=f"How archs are ranked. {SCORES.describe()}. Default: the method's own "
                   f"({', '.join(f'{m}: {METHODS[m].score}' for m in METHODS)}). {_ALIASES}.")
@click.option("--supernet", "supernet_ckpt", type=click.Path(),
              help="Supernet checkpoint or run folder from train-supernet (--score supernet; --method focus: trained with "
                   "--sampler focus). Default: the newest supernet run under runs/.")
@click.option("--data", help="Training data (held-out split carved from it) for --score supernet; 'digits' is built in. "
                             "Default: the data the supernet checkpoint records.")
@click.option("--sampler-k", type=bounds.ints(1, 10_000), default=DEFAULTS.sampler_k, show_default=True,
              help="--method focus: distinct archs within the constraints that the sampler proposes and the score ranks per budget, "
                   "from at most 20x as many draws.")
@click.option("--population", type=bounds.ints(1, 100_000), default=DEFAULTS.population, show_default=True,
              help="--method evolution/random: random archs scored first (the initial population).")
@click.option("--generations", type=bounds.COUNT, default=DEFAULTS.generations, show_default=True,
              help="--method evolution/random: generations after the initial population, at most (see --patience).")
@click.option("--parents", type=bounds.ints(1, 100_000), default=DEFAULTS.parents, show_default=True,
              help="--method evolution: top-k parents per budget.")
@click.option("--mutations", type=bounds.COUNT, default=DEFAULTS.mutations, show_default=True,
              help="--method evolution: children made by mutation and scored per generation (random: --mutations + --crossovers "
                   "uniform archs per generation, as many as evolution scores).")
@click.option("--crossovers", type=bounds.COUNT, default=DEFAULTS.crossovers, show_default=True,
              help="--method evolution: children made by crossover and scored per generation (see --mutations).")
@click.option("--mutation-prob", type=bounds.FRACTION, default=DEFAULTS.layer_prob, show_default=True,
              help="--method evolution: per-layer mutation probability.")
@click.option("--stage-mutation-prob", type=bounds.FRACTION, default=DEFAULTS.stage_prob, show_default=True,
              help="--method evolution: depth / embed dim mutation probability.")
@click.option("--seed", type=bounds.SEED, default=DEFAULTS.seed, show_default=True,
              help="Seed of the search (and of the DSS score's random weights); the same seed gives the same winner.")
@click.option("--patience", type=bounds.ints(1, 100_000), default=DEFAULTS.patience, show_default=True,
              help="--method evolution/random: stop after this many generations without a better feasible arch "
                   "(>= --generations: run them all).")
@click.option("--screen", type=bounds.ints(1, 1000), default=DEFAULTS.screen, show_default=True,
              help="--method evolution: candidate children drawn per scored child; a model fit on the scored archs picks which "
                   "to score (1: AutoFormer's loop, every drawn child scored).")
@click.option("--measure-top", type=bounds.ints(0, 1000),
              help="Time the top-K candidates per budget end to end here and pick the winner on the measured latency "
                   "(default: 3 when the latency table describes this machine, a profile or calibration made here; else 0).")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/search-<space>-<time>).")
@click.option("--resume", is_flag=True, help="Continue the search in --out from its search_state.json.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def search(**opts) -> None:
    """Find the highest-scoring arch under the budgets; writes best.arch.json, pareto.* and log.jsonl."""
    from deployvit.search.plan import plan_search, run_plan  # heavy (torch): only when searching
    from deployvit.search.run import SearchRequest

    constraints = Constraints(
        max_latency=[] if opts["latency"] is None else parse_amounts(opts["latency"], "latency", "--latency"),
        max_flops=_amount(opts["flops"], "flops", "--flops"),
        max_params=_amount(opts["params"], "params", "--params"),
        min_latency=_amount(opts["min_latency"], "latency", "--min-latency"),
        min_flops=_amount(opts["min_flops"], "flops", "--min-flops"),
        min_params=_amount(opts["min_params"], "params", "--min-params"),
    )
    _check_alias(opts["score"], opts["method"])
    config = SearchConfig(
        method=opts["method"], population=opts["population"], generations=opts["generations"],
        parents=opts["parents"], mutations=opts["mutations"], crossovers=opts["crossovers"],
        layer_prob=opts["mutation_prob"], stage_prob=opts["stage_mutation_prob"], seed=opts["seed"],
        patience=opts["patience"], screen=opts["screen"], sampler_k=opts["sampler_k"],
    )
    request = SearchRequest(
        space=opts["space_name"], constraints=constraints, table=opts["table"], device=opts["device"],
        runtime=opts["runtime"], precision=opts["precision"], batch_size=opts["batch_size"], score=opts["score"],
        supernet=opts["supernet_ckpt"], data=opts["data"], config=config,
        out=opts["out"], resume=opts["resume"], measure_top=opts["measure_top"],
        score_device=_score_device(opts["device"]),
    )
    _check_conflicts(request)
    plan = plan_search(request, echo=click.echo)  # every name and path becomes an object; nothing written yet
    result = run_plan(plan, echo=click.echo, progress=not opts["no_progress"])
    if result.is_main:  # under torchrun, rank 0 speaks for all
        print_summary(result)
        if result.winners:
            click.echo(f"next: `{next_command(result, plan.jobs[0].request)}`")
    if result.failure:
        raise CheckFailed(result.failure)


def next_command(result, request) -> str:
    """The journey's next step with real paths: retrain from the supernet that scored the search
    (its data known), else export and verify the winner (`deployvit.runs`: a run folder is its
    best.arch.json)."""
    if request.supernet is not None and request.data is not None:
        return f"deployvit retrain --arch {result.run_dir} --init {request.supernet} --data {request.data}"
    return f"deployvit export --arch {result.run_dir}"


def _check_alias(score: str | None, method: str) -> None:
    """`--score sampler` names its own method: with an explicit --method other than that, one line
    (the library cannot tell an explicit `--method evolution` from the default)."""
    if score in SCORE_ALIASES and click.get_current_context().get_parameter_source("method") != click.core.ParameterSource.DEFAULT:
        alias_method, alias_score = SCORE_ALIASES[score]
        if method != alias_method:
            raise DeployvitError(f"--score {score} means --method {alias_method} --score {alias_score}; "
                                 f"it cannot be combined with --method {method}")


def _check_conflicts(request) -> None:
    """Options the resolved method and score would ignore (`--data` with the DSS score): one line,
    by the shared table of `commands.conflicts`."""
    from deployvit.search.run import method_and_score

    method, score, _ = method_and_score(request)
    reads_supernet = SCORES[score].needs_supernet or METHODS[method].needs_supernet
    conflicts.check("search", {"reads_supernet": reads_supernet, "reads_data": SCORES[score].needs_data})


def _score_device(device: str | None) -> str | None:
    """Where the score runs: `--device cpu` or `cuda[:N]` as given; a table label (h100, a100) names
    the target, not this machine, so the score then runs where it can (CUDA when available)."""
    if device is not None and (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        from deployvit.compute import compute_device

        compute_device(device)  # CUDA asked for on a machine without it: one line, before anything loads
        return device
    return None


def print_summary(result) -> None:
    """The winners table (a `SearchResult`; units in the header), measured rows, and where the files are."""
    click.echo(f"{'budget':>9}  {'space':<16}  {'score':>10}  {'latency':>9}  {'GMACs':>7}  {'params M':>8}  arch")
    for label, cand in result.winners.items():
        m = cand.metrics
        latency = format_amount(m["latency"], "latency") if "latency" in m else "-"
        click.echo(f"{label:>9}  {cand.arch.space:<16}  {cand.score:>10.4g}  {latency:>9}  {m['flops'] / 1e9:>7.3f}  "
                   f"{m['params'] / 1e6:>8.2f}  {cand.arch.summary()}")
    for label, rows in result.measured.items():
        for row in rows:
            click.echo(f"{label:>9}  measured {row['measured_us'] / 1e3:.3f} ms vs predicted {row['predicted_us'] / 1e3:.3f} ms ({row['summary']})")
        picked = [row for row in rows if row.get("winner")]
        if picked and picked[0].get("budget_us") is not None:
            row = picked[0]
            click.echo(f"{label:>9}  winner: measured {row['measured_us'] / 1e3:.3f} ms vs budget {row['budget_us'] / 1e3:g} ms: "
                       f"{row['verdict']} (95% interval {row['ci_us'][0] / 1e3:.3f}-{row['ci_us'][1] / 1e3:.3f} ms, on this machine)")
    for part in result.parts or [result]:
        print_score_vs_size(part, f"in {part.run_dir.name} " if result.parts else "")
    if result.winners:
        plots = ", ".join(str(p.run_dir / "pareto.png") for p in result.parts or [result])
        click.echo(f"winner: {result.run_dir / 'best.arch.json'}; Pareto front: {plots}, pareto.csv beside")


SIZE_TAU_WARNING = 0.7  # TF-TAS's caveat: above this, the budget rather than the score picks the winner


def print_score_vs_size(result, where: str = "") -> None:
    """How strongly the score ranks archs by size (over the random initial population), and a warning
    when the size budget, not the score, decides the winner."""
    taus = {m: result.correlations.get(k) for m in ("params", "flops") for k in result.correlations if k.endswith(f"_vs_{m}")}
    if not taus:
        return
    shown = ", ".join(f"{'-' if t is None else f'{t:.2f}'} with {m if m == 'params' else 'FLOPs'}" for m, t in taus.items())
    click.echo(f"score vs size {where}over {result.correlated_over}: Kendall tau {shown}")
    if max((t for t in taus.values() if t is not None), default=0.0) > SIZE_TAU_WARNING:
        click.echo(
            f"warning: the score ranks archs mostly by size (Kendall tau > {SIZE_TAU_WARNING}), so the size budget decides the "
            "winner (TF-TAS's caveat): bound size from below with --min-params/--min-flops, or rank by --score supernet",
            err=True,
        )
