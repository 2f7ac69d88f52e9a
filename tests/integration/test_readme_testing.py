"""The README's "Testing your workflows" example runs as written, in a fresh project: its
workflow and its tests copied into one test module, the one line of configuration the README
asks for, and pytest run as a user runs it (the plugin found through its entry point)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"one README block with {containing!r}"
    return found[0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    needs = next(line for line in README.splitlines() if line.startswith("**Needs**"))
    assert 'asyncio_mode = "auto"' in needs and "[tool.pytest.ini_options]" in needs
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\nasyncio_mode = "auto"\n')
    workflow = python_block('WorkflowBuilder("checkout"')
    tests = python_block("async def test_checkout(")
    (tmp_path / "test_checkout.py").write_text(workflow + "\n\n" + tests)
    return tmp_path


def pytest_in(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_readme_tests_pass_in_a_fresh_project(project: Path) -> None:
    done = pytest_in(project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout


@pytest.mark.slow
def test_with_autoloading_off_the_plugins_are_named(project: Path) -> None:
    named = ("-p", "asyncio", "-p", "stagewise", "-p", "stagewise-sql")
    done = pytest_in(project, *named, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout
    without = pytest_in(project, *named[:4], PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "fixture 'stagewise_sqlite_env' not found" in without.stdout, without.stdout
