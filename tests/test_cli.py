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


def _commands():
    ctx = click.Context(cli)
    return {name: cli.get_command(ctx, name) for name in COMMANDS}


def test_every_option_of_every_command_has_help_text():
    missing = [f"{name} {'/'.join(p.opts)}" for name, command in _commands().items() for p in command.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert not missing, missing
    for name, command in _commands().items():  # an argument has no help of its own: its command's text names it
        for p in command.params:
            if isinstance(p, click.Argument):
                assert p.name.upper() in (command.help or ""), (name, p.name)


def test_search_help_lists_the_spaces_from_the_presets():
    from deployvit.spaces import PRESETS

    text = " ".join(run_cli("search", "--help").out.split()).replace("- ", "-")  # click wraps lines, at hyphens too
    assert "--space" in text and "auto" in text
    for name in PRESETS:
        assert name in text, name
