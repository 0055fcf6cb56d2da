"""pyproject.toml and environment.yml list the same packages with the same bounds."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = re.compile(r"^\s*-\s+([A-Za-z0-9_.\-]+)\s*([<>=!~].*)?$")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {m.group(1).lower(): (m.group(2) or "").strip() for m in (SPEC.match(f"- {r}") for r in reqs)}


def _environment() -> dict[str, str]:
    specs = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        match = SPEC.match(line.split("#")[0])
        if match and match.group(1) not in ("python", "pip"):
            specs[match.group(1).lower()] = (match.group(2) or "").strip()
    return specs


def test_environment_yml_agrees_with_pyproject():
    assert _environment() == _pyproject()


def test_design_card_packages_are_declared():
    declared = _pyproject()
    for name in ("jupyterlab", "torch", "torchvision", "ipywidgets", "matplotlib", "seaborn", "pot", "nbval",
                 "scikit-learn", "tqdm"):
        assert name in declared, name


def test_constraints_pin_versions_that_satisfy_the_bounds():
    from importlib.metadata import version

    pins = dict(line.split("==") for line in (ROOT / ".ci/constraints.txt").read_text().split() if "==" in line)
    for name, pinned in pins.items():
        assert version(name).split("+")[0] == pinned, f"{name}: installed {version(name)}, constraints pin {pinned}"
