"""pyproject.toml and environment.yml list the same packages with the same bounds; the package's layout
(the methods wing: no private engine names outside it, old paths deprecated, new paths everywhere)."""

import re
import subprocess
import sys
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


# --------------------------------------------------------------------------- the package's layout (the methods wing)
OLD_PATHS = ("cmo", "cws", "synlt", "feedback", "diffusion", "ot")


def _sources(folder: str, pattern: str) -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in sorted((ROOT / folder).rglob(pattern))}


def test_no_module_outside_the_engine_uses_its_private_names():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p, text in _sources("ltkit", "*.py").items() if p.name != "train.py"
                 for i, line in enumerate(text.splitlines(), 1)
                 if re.search(r"\btrain\._[a-z]|from \.?\.?train import _|from ltkit\.train import _", line)]
    assert offenders == []


def test_the_engine_names_no_method_module_and_imports_the_wing_only_when_asked():
    engine = (ROOT / "ltkit" / "train.py").read_text(encoding="utf-8")
    code = [line for line in engine.splitlines() if "import" in line]
    assert not [line for line in code if re.search(r"\b(" + "|".join(OLD_PATHS) + r")\b", line)]
    script = ("import sys, ltkit.train as t; t.validate(t.TrainConfig(method='none')); a = 'ltkit.methods' in sys.modules;"
              " t.validate(t.TrainConfig(method='cmo')); print(a, 'ltkit.methods.cmo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["False", "True"]


def test_old_import_paths_warn_and_give_the_new_modules():
    script = ("import importlib, warnings\n"
              "for old in %r:\n"
              "    with warnings.catch_warnings(record=True) as caught:\n"
              "        warnings.simplefilter('always')\n"
              "        module = importlib.import_module('ltkit.' + old)\n"
              "    print(old, module is importlib.import_module('ltkit.methods.' + old),\n"
              "          any(w.category is DeprecationWarning and f'ltkit.{old} moved to ltkit.methods.{old}' in str(w.message)\n"
              "              for w in caught))\n") % (OLD_PATHS,)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.splitlines() == [f"{old} True True" for old in OLD_PATHS]


def test_readme_and_notebooks_use_the_new_paths():
    texts = {**_sources("notebooks", "*.ipynb"), ROOT / "README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    old = re.compile(r"ltkit\.(" + "|".join(OLD_PATHS) + r")\b")
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, text in texts.items() for m in old.finditer(text)]
    # the README names the old flat paths once, where it says they are deprecated
    assert [h for h in hits if not h.startswith("README.md")] == []
    assert len([h for h in hits if h.startswith("README.md")]) <= 2
