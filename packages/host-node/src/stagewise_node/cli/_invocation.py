"""How to run `stagewise` again from where this process was started, for the commands the
CLI suggests (`stagewise runs show ...` after the demo).

`make demo` runs the demo through `uv run`, with the project's virtualenv on the PATH of
that one process only: a bare `stagewise` printed there fails with "command not found" in
the user's shell. So the suggestion is `uv run stagewise` when uv started us (it sets `$UV`
to its own path for what it runs), `stagewise` when the PATH finds this installation's
script, and this interpreter with `-m stagewise_node.cli` otherwise.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

Which = Callable[[str], str | None]


def stagewise_command(
    env: Mapping[str, str] | None = None,
    which: Which = shutil.which,
    executable: str | None = None,
    cwd: Path | None = None,
) -> str:
    """The shell words that run `stagewise` here (arguments for tests; defaults: this
    process's environment, PATH, interpreter and directory)."""
    env = os.environ if env is None else env
    executable = executable or sys.executable
    uv = env.get("UV")
    if uv:
        return f"{_uv_words(uv, which, cwd or Path.cwd())} run stagewise"
    script = which("stagewise")
    if script is not None and _same_dir(script, executable):
        return "stagewise"
    return f"{shlex.quote(executable)} -m stagewise_node.cli"


def _uv_words(uv: str, which: Which, cwd: Path) -> str:
    on_path = which("uv")
    if on_path is not None and _same_file(on_path, uv):
        return "uv"
    path = Path(uv)
    if path.is_relative_to(cwd):  # uv installed in the project (`make` puts it in .tools/)
        return shlex.quote(str(path.relative_to(cwd)))
    return shlex.quote(uv)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _same_dir(script: str, executable: str) -> bool:
    """Whether `script` is the one installed with this interpreter (its `bin/`)."""
    return _same_file(str(Path(script).parent), str(Path(executable).parent))
