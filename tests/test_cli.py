"""The command group: every command resolves, and a command imports only what it needs."""

from __future__ import annotations

import subprocess
import sys

import click

from deployvit.cli import COMMANDS, cli


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
