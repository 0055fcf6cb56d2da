"""Run records: every training run writes ``runs/<name>/`` and can be loaded back.

A run directory holds

* ``config.json``   the whole configuration and the environment (versions,
  device, world size, git commit), written before the first epoch;
* ``history.jsonl`` one JSON line of metrics per epoch, appended as training goes
  (so a run still being written can be read);
* ``result.json``   the final-epoch evaluation on the full test set: overall,
  many / medium / few, worst class, per-class accuracy, confusion matrix;
* ``checkpoint.pt`` model, optimiser and method state after the last finished
  epoch, written atomically (temporary file + rename).

A run directory is never silently overwritten: :func:`prepare_run_dir` raises
unless told to ``resume`` or ``overwrite``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

IF_EXISTS = ("error", "resume", "overwrite")


def environment(device: torch.device | str = "cpu", world_size: int = 1) -> dict[str, Any]:
    """Versions, device and world size: what a reader needs to reproduce a number."""
    import numpy
    import torchvision

    device = torch.device(device)
    env = dict(
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        numpy=numpy.__version__,
        ltkit=_ltkit_version(),
        git_commit=_git_commit(),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        cuda=torch.version.cuda if device.type == "cuda" else None,
        world_size=world_size,
        cpu_threads=torch.get_num_threads(),
    )
    return env


def _ltkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ltkit")
    except PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def atomic_write_bytes(path: Path, write: callable) -> None:
    """Write a file through a temporary file in the same folder and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=1, default=str).encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume. Start the run without resume, or check the run name.")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for a damaged file
        raise RuntimeError(
            f"the checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}). "
            "Delete it to restart the run from scratch (if_exists='overwrite')."
        ) from err


def prepare_run_dir(run_dir: Path, config: dict, if_exists: str = "error", defaults: dict | None = None) -> str:
    """Create the run directory; returns 'new', 'resume' or 'finished'.

    ``if_exists``: 'error' (default) refuses an existing run; 'resume'
    continues it (or returns 'finished' when it has a result), provided its
    config matches; 'overwrite' deletes it first.  A field missing from the
    stored config (a run written before the field existed) matches its value
    in ``defaults``.
    """
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists={if_exists!r}; choose one of: {', '.join(IF_EXISTS)}.")
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if if_exists == "error":
            raise FileExistsError(
                f"run directory {run_dir} already exists. Pass resume (if_exists='resume') to continue or reuse it, "
                "if_exists='overwrite' to replace it, or choose another name."
            )
        if if_exists == "overwrite":
            shutil.rmtree(run_dir)
        else:
            stored = {**(defaults or {}), **read_json(run_dir / "config.json").get("config", {})}
            differing = sorted(k for k in set(stored) | set(config) if k not in _VOLATILE and stored.get(k) != config.get(k))
            if differing:
                raise ValueError(
                    f"cannot resume {run_dir}: its config differs in {differing} "
                    f"(stored {[stored.get(k) for k in differing]}, now {[config.get(k) for k in differing]}). "
                    "Choose another run name or if_exists='overwrite'."
                )
            return "finished" if (run_dir / "result.json").is_file() else "resume"
    run_dir.mkdir(parents=True, exist_ok=True)
    return "new"


_VOLATILE = {"if_exists", "progress", "out_dir", "name", "num_workers", "device", "threads"}


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: is this a run directory written by ltkit?") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the run record is truncated or damaged.") from err


def read_history(run_dir: Path) -> list[dict]:
    """Per-epoch metrics; a half-written last line (a run being written) is skipped."""
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_history(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / "history.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_history(run_dir: Path, last_epoch: int) -> None:
    """Drop history rows after ``last_epoch`` (rows of an epoch that was not checkpointed)."""
    rows = [r for r in read_history(run_dir) if r["epoch"] <= last_epoch]
    atomic_write_bytes(Path(run_dir) / "history.jsonl", lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def load_run(run_dir: str | os.PathLike) -> dict:
    """A run record: name, dir, config, env, history and (when finished) result."""
    run_dir = Path(run_dir)
    meta = read_json(run_dir / "config.json")
    result_path = run_dir / "result.json"
    return dict(
        name=run_dir.name,
        dir=str(run_dir),
        config=meta.get("config", {}),
        env=meta.get("env", {}),
        history=read_history(run_dir),
        result=read_json(result_path) if result_path.is_file() else None,
    )


def load_runs(root: str | os.PathLike = "runs", finished_only: bool = True) -> list[dict]:
    """Every run under ``root`` (sorted by name)."""
    root = Path(root)
    records = [load_run(d) for d in sorted(root.iterdir()) if (d / "config.json").is_file()] if root.is_dir() else []
    return [r for r in records if r["result"] is not None] if finished_only else records
