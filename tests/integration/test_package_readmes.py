"""The package READMEs stand on their own: the kernel's example runs as written, and every
package ships the license it declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))


async def test_the_kernel_readme_example_runs_as_written() -> None:
    text = (ROOT / "packages" / "kernel" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict[str, object] = {}
    exec(compile("\n".join(blocks), "packages/kernel/README.md", "exec"), namespace)
    await namespace["test_checkout"]()  # type: ignore[operator]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_each_package_has_its_license_metadata_and_bounded_siblings(package: Path) -> None:
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (package / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert project["license-files"] == ["LICENSE"]
    assert project["requires-python"] == ">=3.11"
    assert project["keywords"] and project["classifiers"]
    readme = (package / project["readme"]).read_text()
    assert len(readme.splitlines()) > 10, "a README that reads well on its own"
    assert "](../" not in readme, "no links that only work inside the repository"
    for requirement in project["dependencies"]:
        if requirement.startswith("stagewise"):
            assert ">=" in requirement, requirement
