"""The commands the demo suggests work where it ran: `uv run stagewise ...` when uv started
it (as `make demo` does), `stagewise ...` when the PATH has it, else this interpreter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stagewise_node.cli._invocation import stagewise_command
from tests.integration.node.processes import ROOT

BIN = str(Path(sys.executable).parent)


def test_under_uv_the_suggestion_is_uv_run() -> None:
    uv = "/opt/uv/bin/uv"
    assert stagewise_command({"UV": uv}, lambda name: None, cwd=ROOT) == f"{uv} run stagewise"
    project_uv = str(ROOT / ".tools" / "bin" / "uv")
    assert (
        stagewise_command({"UV": project_uv}, lambda name: None, cwd=ROOT)
        == ".tools/bin/uv run stagewise"
    )


def test_a_uv_on_the_path_is_named_plainly(tmp_path: Path) -> None:
    uv = tmp_path / "uv"
    uv.write_text("")
    assert stagewise_command({"UV": str(uv)}, lambda name: str(uv)) == "uv run stagewise"


def test_without_uv_stagewise_from_the_path_or_this_interpreter(tmp_path: Path) -> None:
    here = str(Path(BIN) / "stagewise")
    assert stagewise_command({}, lambda name: here) == "stagewise"
    elsewhere = str(tmp_path / "stagewise")  # another installation's script
    assert (
        stagewise_command({}, lambda name: elsewhere) == f"{sys.executable} -m stagewise_node.cli"
    )
    assert stagewise_command({}, lambda name: None) == f"{sys.executable} -m stagewise_node.cli"


def user_shell(**extra: str) -> dict[str, str]:
    """The environment of a shell the user types in: no virtualenv on the PATH, no $UV."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != BIN]
    env = {k: v for k, v in os.environ.items() if k not in ("UV", "VIRTUAL_ENV", "PYTHONPATH")}
    return {**env, "PATH": os.pathsep.join(path), **extra}


def demo_then_suggestions(command: list[str], env: dict[str, str], user: dict[str, str]) -> None:
    """Run the demo, then every command it suggests, as the user would: from the same
    directory, in their own shell."""
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    suggested = re.findall(r"^  (.+ runs (?:show|list) .+)$", done.stdout, re.MULTILINE)
    assert len(suggested) == 2, done.stdout
    run_id = re.search(r"runs show (\S+)", suggested[0])
    assert run_id
    for line in suggested:
        ran = subprocess.run(
            line, shell=True, cwd=ROOT, env=user, capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, f"{line}\n{ran.stdout}{ran.stderr}"
        assert run_id.group(1) in ran.stdout
        assert "COMPLETED" in ran.stdout


@pytest.mark.slow
def test_the_demo_run_through_uv_suggests_commands_that_work(tmp_path: Path) -> None:
    project_uv = ROOT / ".tools" / "bin" / "uv"  # where `make` installs it
    uv = os.environ.get("UV") or shutil.which("uv") or (project_uv.exists() and str(project_uv))
    if not uv:
        pytest.skip("uv is not installed")
    env = {**os.environ, "TMPDIR": str(tmp_path), "UV_NO_SYNC": "1"}
    # the suggestion runs with uv, as typed; UV_NO_SYNC keeps uv from syncing the test's venv
    user = user_shell(TMPDIR=str(tmp_path), UV_NO_SYNC="1")
    demo_then_suggestions([uv, "run", "stagewise", "demo"], env, user)


@pytest.mark.slow
def test_the_demo_run_from_the_path_suggests_commands_that_work(tmp_path: Path) -> None:
    user = user_shell(TMPDIR=str(tmp_path))
    on_path = {**user, "PATH": os.pathsep.join([BIN, user["PATH"]])}
    demo_then_suggestions(["stagewise", "demo"], on_path, on_path)
    demo_then_suggestions([sys.executable, "-m", "stagewise_node.cli", "demo"], user, user)
