"""The command group: every command resolves, and a command imports only what it needs."""

from __future__ import annotations

import subprocess
import sys

import click

from deployvit.cli import COMMANDS, SHORT_HELP, cli
from tests.conftest import run_cli


def test_every_listed_command_resolves_to_a_click_command_of_that_name():
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


def test_search_help_does_not_import_torch():
    code = "import sys; from deployvit.cli import main\ntry:\n    main(['search', '--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def _imports_after(args: list[str]) -> list[str]:
    """Which of torch and numpy a fresh interpreter has imported after `deployvit ARGS`."""
    code = (f"import sys; from deployvit.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return eval(out.strip().splitlines()[-1])


def test_group_help_imports_neither_torch_nor_numpy():
    """`deployvit --help` lists every command from SHORT_HELP: no command module, so no torch."""
    assert _imports_after(["--help"]) == []
    assert _imports_after([]) == []  # no command: click prints the same help


def test_short_help_lines_are_the_commands_own():
    ctx = click.Context(cli)
    assert list(SHORT_HELP) == list(COMMANDS)
    for name, text in SHORT_HELP.items():
        assert text == cli.get_command(ctx, name).get_short_help_str(limit=10**6), name


def test_group_help_lists_every_command_and_command_help_is_full():
    listed = run_cli("--help")
    assert listed.code == 0
    names = [line.split()[0] for line in listed.out.split("Commands:")[1].splitlines() if line.strip()]
    assert names == list(COMMANDS)
    search = run_cli("search", "--help")
    assert search.code == 0 and "--latency" in search.out and "--population" in search.out
