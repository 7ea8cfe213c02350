"""The layers stay one-way, and the contracts in .importlinter hold: the product never imports
the lab, the OpenAI SDK stays in worker.providers, psycopg in the data-access modules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def test_import_layers_are_kept() -> None:
    root = Path(__file__).resolve().parent.parent
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency"
    done = subprocess.run(
        [lint, "--config", str(root / ".importlinter")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
