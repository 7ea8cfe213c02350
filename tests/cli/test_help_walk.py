"""Every command explains itself: each --help (found by walking the command tree, so a new
command is covered without editing this file) describes every option and ends with examples and
the exit codes; usage mistakes are one line that says where to read more."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from cli.support import assert_one_line_error, base_env, invoke, make_config, write_config
from worker.cli import cli


def _walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += _walk(sub, (*path, name))
    return found


COMMANDS = _walk(cli)


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "run", "drain", "status", "dead-letters discard", "retry-failed", "demo"} <= names


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=lambda c: " ".join(c) if isinstance(c, tuple) else ""
)
def test_every_option_has_a_description(path: tuple[str, ...], command: click.Command) -> None:
    for param in command.params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"{' '.join(path)} {param.opts[0]}"


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=lambda c: " ".join(c) if isinstance(c, tuple) else ""
)
def test_help_ends_with_examples_and_exit_codes(
    path: tuple[str, ...], command: click.Command
) -> None:
    result = invoke([*path, "--help"], base_env(None))

    assert result.code == 0, result
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("Exit codes: 0 "), result.stdout
    examples = lines.index("Examples:")
    assert examples > lines.index("Options:"), result.stdout
    shown = lines[examples + 1 : -1]
    assert shown, result.stdout
    for example in shown:
        assert example.startswith("cleanup-worker "), example
        assert " ".join(path) in example, (path, example)  # an example of this command


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["drain", "--bogus"], "No such option '--bogus': see `cleanup-worker drain --help`"),
        (["drain", "--max-seconds", "soon"], "see `cleanup-worker drain --help`"),
        (["nope"], "No such command 'nope': see `cleanup-worker --help`"),
        (["demo", "--chats", "0"], "see `cleanup-worker demo --help`"),
        (["retry-failed", "--chat-id", "zz"], "is not a valid UUID"),
        (["--log-level", "loud", "status"], "see `cleanup-worker --help`"),
        (["dead-letters", "list", "--status", "gone"], "dead-letters list --help"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    result = invoke(args, base_env(None))
    line = assert_one_line_error(result, needle, code=2)
    assert line.startswith("cleanup-worker: "), line
    assert "Usage:" not in result.stderr
    assert "Try " not in result.stderr


def test_a_bare_group_shows_its_commands(tmp_path: Path) -> None:
    result = invoke(["dead-letters"], base_env(None))
    assert result.code == 2, result
    for name in ("list", "replay", "discard"):
        assert f"  {name} " in result.stdout, result
    assert result.stderr == ""


def test_run_refuses_a_configuration_without_a_provider_backend(tmp_path: Path, db: str) -> None:
    config = make_config(None)
    config["providers"].pop("backends")
    path = write_config(tmp_path / "config.yaml", config)

    result = invoke(["--config", str(path), "run"], base_env(db))

    assert_one_line_error(result, "providers.backends: none configured", "check-config", code=2)
    assert result.stdout == ""
