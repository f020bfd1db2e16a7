"""The `deployvit` command line: a click group whose commands live in `deployvit.commands`.

`main()` is the console entry point. It runs click in non-standalone mode so that every failure,
click's own usage errors included, becomes exactly one line on stderr and the exit codes of
DESIGN.md section 3 (2 bad input / missing dependency, 1 a check failed), never a traceback.
"""

from __future__ import annotations

import sys

import click

from deployvit import __version__
from deployvit.errors import DeployvitError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="deployvit")
def cli() -> None:
    """Find the most accurate ViT that fits a latency budget on your GPU and runtime, train it,
    and ship it as a verified ONNX / TensorRT artifact."""


def _register_commands() -> None:
    from deployvit.commands import inspect as inspect_cmd

    cli.add_command(inspect_cmd.inspect)
    from deployvit.commands import search as search_cmd

    cli.add_command(search_cmd.search)
    from deployvit.commands import export as export_cmd

    cli.add_command(export_cmd.export)
    cli.add_command(export_cmd.benchmark)
    from deployvit.commands import train as train_cmd

    cli.add_command(train_cmd.train_supernet_cmd)
    cli.add_command(train_cmd.retrain_cmd)
    cli.add_command(train_cmd.evaluate_cmd)
    from deployvit.commands import latency as latency_cmd, profile as profile_cmd

    cli.add_command(profile_cmd.profile_cmd)
    cli.add_command(latency_cmd.latency_cmd)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors and DESIGN.md exit codes."""
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
