"""The README's "In five lines" runs as written: its two blocks, one after the other, as a
script in an empty directory (where `sqlite:///app.db` is created)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.test_readme_testing import python_block


def test_the_five_lines_run_as_written(tmp_path: Path) -> None:
    script = python_block("async with Engine(") + "\n" + python_block("with SyncEngine(")
    (tmp_path / "main.py").write_text(script)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "hello, world\nhello, notebook\n"
    assert (tmp_path / "app.db").exists()
