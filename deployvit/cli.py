"""The `deployvit` command line: a click group whose commands live in `deployvit.commands`.

`main()` is the console entry point. It runs click in non-standalone mode so that every failure,
click's own usage errors included, becomes exactly one line on stderr and the exit codes of
docs/DESIGN.md section 3 (2 bad input / missing dependency, 1 a check failed), never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from deployvit import __version__
from deployvit.errors import DeployvitError


# name -> "module:attribute"; a command's module is imported only when that command is used, so
# `deployvit search` does not pay for the exporters, and `deployvit --help` imports none of them
# (it lists SHORT_HELP below).
COMMANDS = {
    "inspect": "deployvit.commands.inspect:inspect",
    "import": "deployvit.commands.import_parent:import_cmd",
    "search": "deployvit.commands.search:search",
    "profile": "deployvit.commands.profile:profile_cmd",
    "latency": "deployvit.commands.latency:latency_cmd",
    "tables": "deployvit.commands.tables:tables_cmd",
    "train-supernet": "deployvit.commands.train:train_supernet_cmd",
    "retrain": "deployvit.commands.train:retrain_cmd",
    "evaluate": "deployvit.commands.train:evaluate_cmd",
    "export": "deployvit.commands.export:export",
    "benchmark": "deployvit.commands.export:benchmark",
}

# name -> the command's short help (the first sentence of its docstring), so that `deployvit --help`
# lists the commands without importing torch through them: 0.1 s instead of seconds. A command
# missing here is imported for its own line; tests/test_cli.py checks every line against the command.
SHORT_HELP = {
    "inspect": "Print params, FLOPs (MACs), depth and embed dim of ARCH_FILE (an arch JSON or a run folder) or of --sample N archs.",
    "import": "Import a parent's weights as a searchable deployvit supernet (a timm ViT/DeiT, or an AutoFormer supernet).",
    "search": "Find the highest-scoring arch under the budgets; writes best.arch.json, pareto.* and log.jsonl.",
    "profile": "Time every block shape of a space, calibrate on whole archs, validate on held-out archs, and write the latency table "
               "(resumable: rerun the same command after an interruption).",
    "latency": "Print the table's calibrated latency prediction for ARCH_FILE (and the measured one); ARCH_FILE may be a run folder.",
    "tables": "List the user's (./latency_tables, $DEPLOYVIT_HOME/latency_tables) and the shipped latency tables, and for each space "
              "which one `search` would use on this machine, or the estimate it would build on demand.",
    "train-supernet": "Train the weight-sharing supernet of --space on --data with a subnet --sampler.",
    "retrain": "Train the standalone model of --arch (from inherited supernet weights or from scratch, optionally distilling "
               "from the supernet's largest arch).",
    "evaluate": "Top-1 / top-5 accuracy of a retrained model, or of an arch with inherited supernet weights.",
    "export": "Export a model to a file (an ONNX graph, a TensorRT engine, ...), verify it against PyTorch fp32, time it, "
              "and check the latency contract.",
    "benchmark": "Export, verify and time every available format of a model (and timm baselines at the same input size) into one table.",
}


class LazyGroup(click.Group):
    """A click group that imports each command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from SHORT_HELP, as click would write it from the imported commands."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            text = SHORT_HELP.get(name)
            if text is None:
                command = self.get_command(ctx, name)
                text = command.get_short_help_str(limit) if command is not None else ""
            rows.append((name, click.Command(name, help=text).get_short_help_str(limit)))  # click's own shortening
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="deployvit")
def cli() -> None:
    """Find the most accurate ViT that fits a latency budget on your GPU and runtime, train it,
    and ship it as a verified ONNX / TensorRT artifact."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors and docs/DESIGN.md exit codes."""
    try:
        rv = cli.main(args=argv, prog_name="deployvit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("deployvit: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"deployvit: {exc.format_message()}", err=True)
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except DeployvitError as exc:
        click.echo(f"deployvit: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
