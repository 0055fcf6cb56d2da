"""CI rehearses every notebook's paper-scale path, so that it cannot break unseen.

Each notebook is executed with its parameters cell followed by an injected cell
(the papermill convention) that sets ``PAPER_SCALE = True``, points the data
roots at small files generated here in the real on-disk formats (CIFAR-10 /
CIFAR-100 python pickles, ImageNet-LT / Places-LT split-file trees with every
class present), launches runs through torchrun with ``NPROC = 2`` and cuts every
run short with ``REHEARSAL`` (a few optimiser steps, a few test images).  The
paper path must run without an error, write its runs under ``RUNS_DIR`` and
skip the quick-mode training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from test_data import _write_cifar

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PARAMETERS_MARK = "# ---- parameters ----"
REHEARSAL = dict(max_steps=2, max_test_images=40, num_workers=0, eval_every=1000, checkpoint_every=1000)
# The notebooks whose paper-scale path follows the parameters-cell contract (the others join as they do).
PAPER_NOTEBOOKS = ["02_sampling_and_losses", "03_cmo", "04_sinkhorn_matching", "05_classwise_splitting", "06_feedback_guidance", "07_results_explorer",
                   "08_your_method"]


def _write_split_tree(root: Path, train_file: str, test_file: str, num_classes: int) -> None:
    """A split-file data set with every class present (2 train images of class 0, 1 of the others; 1 test each)."""
    rng = np.random.RandomState(0)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for split in ("train", "test"):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for label in range(num_classes):
            for i in range(2 if split == "train" and label == 0 else 1):
                rel = f"{split}/{label}_{i}.jpg"
                Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / rel, format="JPEG")
                lines[split].append(f"{rel} {label}")
    (root / train_file).write_text("\n".join(lines["train"]) + "\n")
    (root / test_file).write_text("\n".join(lines["test"]) + "\n")


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("paper-data")
    _write_cifar(root, 10, 100, test_per_class=4)  # 100 per class: at IF 100 the smallest class keeps 1 image
    _write_cifar(root, 100, 100, test_per_class=1)
    _write_split_tree(root / "ImageNet_LT", "ImageNet_LT_train.txt", "ImageNet_LT_test.txt", 1000)
    _write_split_tree(root / "Places_LT", "Places_LT_train.txt", "Places_LT_test.txt", 365)
    return dict(CIFAR_ROOT=str(root), DATA_ROOT=str(root))


def _rehearsal_cell(paper_data: dict[str, str], runs_dir: Path) -> nbformat.NotebookNode:
    values = dict(PAPER_SCALE=True, NPROC=2, SEEDS=[0], RUNS_DIR=str(runs_dir), REHEARSAL=REHEARSAL, **paper_data)
    source = "# injected by tests/test_paper_paths.py: rehearse the paper-scale path\n" + "".join(
        f"{name} = {value!r}\n" for name, value in values.items())
    return nbformat.v4.new_code_cell(source)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_the_parameters_cell_is_marked_and_tagged_for_papermill(path):
    """One parameters cell, marked for readers and tagged ``parameters`` for papermill and tests/test_browser.py."""
    notebook = nbformat.read(path, as_version=4)
    marked = [i for i, cell in enumerate(notebook.cells)
              if cell.cell_type == "code" and cell.source.lstrip().startswith(PARAMETERS_MARK)]
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(marked) == 1 and marked == tagged, f"{path.name}: marked cells {marked}, tagged cells {tagged}"


@pytest.mark.parametrize("name", PAPER_NOTEBOOKS)
def test_the_paper_scale_path_runs(name, paper_data, tmp_path):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    marks = [i for i, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and cell.source.lstrip().startswith(PARAMETERS_MARK)]
    assert marks, f"{name}: no parameters cell starting with {PARAMETERS_MARK!r}"
    runs_dir = tmp_path / "runs"
    notebook.cells.insert(marks[0] + 1, _rehearsal_cell(paper_data, runs_dir))
    for cell in notebook.cells:
        cell.pop("outputs", None) if cell.cell_type != "code" else cell.update(outputs=[], execution_count=None)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    os.environ.update({k: v for k, v in env.items() if k in ("OMP_NUM_THREADS", "MPLBACKEND")})
    client.execute()
    records = [json.loads(p.read_text()) for p in runs_dir.rglob("result.json")]
    assert records, f"{name}: the paper path wrote no run under RUNS_DIR"
    assert all(r.get("stopped_at_step") == REHEARSAL["max_steps"] for r in records)
    configs = [json.loads(p.read_text())["config"] for p in runs_dir.rglob("config.json")]
    quick = [c for c in configs if c["dataset"] in ("digits-lt", "context-digits-lt") and c.get("max_steps") is None]
    assert not quick, f"{name}: PAPER_SCALE=True still trained quick-mode runs: {[c['name'] for c in quick]}"
