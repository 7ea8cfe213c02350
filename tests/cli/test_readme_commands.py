"""The README's "Run it" commands work as written after its set-up: the environment's activation
puts `cleanup-worker` on PATH (nothing else is assumed on PATH, not even `uv`), and every command
of the block runs against a real database with a config.yaml in the working directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cli.support import REPO, base_env, make_config, subprocess_env, write_config
from cwlab.fake_openai import FakeOpenAI

DAEMON_SECONDS = 6  # `run` is stopped with SIGTERM after this long (it exits 0 on SIGTERM)


def readme_run_block() -> list[str]:
    """The command lines of the first ```sh block under "## Run it", comments stripped."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Run it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "README has no sh block under Run it"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def _bare_path() -> str:
    """PATH without any virtual environment (`uv run` puts .venv/bin first) and without uv."""
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep) if ".venv" not in p]
    path = os.pathsep.join(keep)
    assert shutil.which("cleanup-worker", path=path) is None, "cleanup-worker already on PATH"
    return path


def test_the_block_starts_with_the_activation_and_only_uses_cleanup_worker() -> None:
    lines = readme_run_block()
    assert lines[0] == ". .venv/bin/activate", lines
    assert all(line.startswith("cleanup-worker ") for line in lines[1:]), lines
    assert not any(re.match(r"uv\b", line) for line in lines)


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path: Path, fake: FakeOpenAI, db: str) -> None:
    if not (REPO / ".venv" / "bin" / "activate").exists():
        pytest.skip("no .venv in this checkout (the README's set-up was not run)")
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    write_config(tmp_path / "config.yaml", make_config(fake))
    env = subprocess_env(base_env(db)) | {"PATH": _bare_path()}
    env.pop("VIRTUAL_ENV", None)
    activate, *commands = readme_run_block()

    for command in commands:
        if command.endswith(" run"):  # the daemon: stopped the way Kubernetes stops it
            command = f"timeout --preserve-status -s TERM {DAEMON_SECONDS} {command}"
        done = subprocess.run(
            ["bash", "-c", f"set -e; {activate}; {command}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
