"""Run records: every training run writes ``runs/<name>/`` and can be loaded back.

A run directory holds

* ``config.json``   the whole configuration and the environment (versions,
  device, world size, git commit), written before the first epoch;
* ``history.jsonl`` one JSON line of metrics per epoch, appended as training goes
  (so a run still being written can be read);
* ``result.json``   the final-epoch evaluation on the full test set: overall,
  many / medium / few, worst class, per-class accuracy, confusion matrix;
* ``checkpoint.pt`` model, optimiser and method state after the last finished
  epoch, written atomically (temporary file + rename);
* ``.lock``         while a process writes the run: its pid, host and start time.

Every record file is written with mode ``0644`` (:data:`FILE_MODE`, whatever the
umask): records are meant to be read and shared, and nothing in them is secret.

Names.  A run name is one path component (:func:`check_run_name`): no
separators, not ``.`` / ``..``, not hidden, no control characters, at most
:data:`MAX_NAME_BYTES` bytes, so that ``out_dir / name`` always lies directly
inside ``out_dir``.  :func:`safe_name` turns a human label ("BS + CMO") into
such a name ("bs-cmo").

Claiming.  :func:`prepare_run_dir` creates (or reuses) the directory and holds
an exclusive lock on ``run_dir/.lock`` (``fcntl.flock``) until
:func:`release_run_dir`; a second writer of the same run gets
:class:`RunInUseError` naming the holder's pid and host.  The kernel drops the
lock when its process dies, so a lock file left by a killed run (SIGKILL,
power loss) is *stale*: the next claim takes it over and says so in a warning.
Without ``fcntl`` (Windows, file systems without locks) the lock file is
created exclusively (``O_CREAT | O_EXCL``) and a stale one is refused with the
command that removes it.  A run directory is never silently overwritten:
``if_exists='overwrite'`` deletes only the record files of a folder that is an
ltkit run (nothing but ``*.json`` / ``*.jsonl`` / ``*.pt`` files) and refuses
any other folder.

Loading.  Checkpoints and every other torch file are read with
``torch.load(weights_only=True)`` (:func:`safe_load`): tensors, dicts, lists,
tuples, numbers, strings and ``None`` only.  A pickle that would call any
other function (and so could run code) is refused with :class:`UnsafeFileError`.
Store plain Python values in checkpoints (``float(x)``, ``tensor.tolist()``),
not numpy scalars or arrays: those are refused too.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import platform
import re
import shlex
import socket
import subprocess
import tempfile
import time
import unicodedata
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import torch

from . import checks

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

IF_EXISTS = ("error", "resume", "overwrite")
RECORD_FILES = ("config.json", "history.jsonl", "result.json", "checkpoint.pt")
METHOD_FILES = ("synthesis.json",)  # what the kit's methods add to a run folder (Syn-LT / M2m's synthesis record)
LOCK_NAME = ".lock"
FILE_MODE = 0o644
MAX_NAME_BYTES = 200

OVERWRITE_HINT = "if_exists='overwrite' (--if-exists overwrite)"
_RESUME = "if_exists='resume' (--resume)"


# =========================================================================== errors
class RunExistsError(checks.LtkitError, FileExistsError):
    """The run directory is taken: it exists and ``if_exists`` does not allow reusing it, or it is no ltkit run."""


class RunInUseError(RunExistsError):
    """Another process (or another run in this process) holds the run directory's lock."""


class RecordError(checks.LtkitError, ValueError):
    """A run record file (config.json, result.json, history.jsonl) is damaged or has the wrong shape."""


class MissingRecordError(checks.LtkitError, FileNotFoundError):
    """A run record file that should be there is not."""


class CheckpointError(checks.LtkitError, RuntimeError):
    """A torch file is truncated or damaged, or does not hold what ltkit writes."""


class UnsafeFileError(CheckpointError):
    """A torch file holds objects other than tensors and plain data: loading it could run code, so it is refused."""


# =========================================================================== environment
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


# =========================================================================== names
def check_run_name(name: Any) -> str:
    """``name`` if it is one safe path component (a folder directly inside ``out_dir``), else a one-line error."""
    if not isinstance(name, str):
        raise checks.InputTypeError(f"run name must be a string, got {type(name).__name__} {name!r}.")
    size = len(name.encode("utf-8", "surrogateescape"))
    problem = (
        "is empty" if not name
        else "is '.' or '..', a reference to a folder, not a name" if name in (".", "..")
        else "contains a path separator (absolute paths and sub-folders are not run names)" if re.search(r"[/\\]", name)
        else "contains a control character (NUL, newline, tab, ...)" if re.search(r"[\x00-\x1f\x7f]", name)
        else "starts with '.' (a hidden folder that run listings skip)" if name.startswith(".")
        else "starts or ends with white space" if name != name.strip()
        else f"is {size} bytes long (at most {MAX_NAME_BYTES})" if size > MAX_NAME_BYTES
        else None
    )
    if problem:
        raise checks.InputError(f"run name {name!r} {problem}; use one folder name of letters, digits, '-', '_' and '.', "
                                "e.g. 'cifar100-lt-bs-s0' (ltkit.runs.safe_name makes one from a label).")
    return name


def safe_name(label: str) -> str:
    """A shell-friendly folder name for a human label: ``"BS + CMO"`` -> ``"bs-cmo"``.

    Lower case ASCII letters, digits, ``.``, ``_`` and ``-`` (every other run of
    characters becomes one ``-``); accents are dropped (``"é"`` -> ``"e"``).
    Deterministic; two labels may give the same name.
    """
    text = unicodedata.normalize("NFKD", str(label)).encode("ascii", "ignore").decode().lower()
    name = re.sub(r"[^a-z0-9._]+", "-", text).strip("-.")
    name = name[:MAX_NAME_BYTES].strip("-.")
    if not name:
        raise checks.InputError(f"label {label!r} has no letters or digits to make a run name from; pass a name "
                                "such as 'cifar100-lt-bs-s0'.")
    return name


def run_path(out_dir: str | os.PathLike, name: str) -> Path:
    """``out_dir / name`` after :func:`check_run_name` (``Path("runs") / "/abs"`` would silently leave ``out_dir``)."""
    return Path(out_dir) / check_run_name(name)


# =========================================================================== files
def _chmod(path: str | os.PathLike) -> None:
    try:
        os.chmod(path, FILE_MODE)
    except OSError:  # a file system without modes (some network shares)
        pass


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file through a temporary file in the same folder and rename it into place (mode :data:`FILE_MODE`)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _chmod(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=1, default=str).encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` atomically; keep ``state`` to tensors and plain Python data so that :func:`safe_load` reads it."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def _first_line(err: BaseException, limit: int = 200) -> str:
    """A short one-line reason from an exception whose message may span lines (torch's do)."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and "weights_only" not in ln and not ln.startswith(("Weights only", "Check the doc"))]
    line = lines[0].split(". ")[0] if lines else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _torch_load(path: Path, map_location: Any, fix: str) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise UnsafeFileError(
                f"refused to load {path}: it refers to {found.group(1)}, not only tensors and plain data, so "
                "unpickling it could run code; ltkit never writes such a file (it was crafted or written by other "
                "code): load it only if you trust its source."
            ) from err
        raise CheckpointError(f"{path} is corrupt or truncated ({_first_line(err)}); {fix}.") from err
    except Exception as err:  # torch raises RuntimeError, EOFError, ... for a damaged file
        raise CheckpointError(f"{path} is corrupt or truncated ({type(err).__name__}: {_first_line(err)}); {fix}.") from err


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, with one-line errors naming the file.

    :class:`UnsafeFileError` for a file that would run code, :class:`CheckpointError`
    for a damaged one, :class:`MissingRecordError` for a missing one.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingRecordError(f"{path} does not exist (or is not a file): check the path.")
    return _torch_load(path, map_location, "replace the file with a good copy")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded safely (see :func:`safe_load`)."""
    path = Path(path)
    if not path.is_file():
        raise MissingRecordError(
            f"no checkpoint at {path}: a run writes checkpoint.pt when its first checkpointed epoch ends; "
            "train (or finish) that run first, or check the run directory.")
    fix = f"retrain the run with {OVERWRITE_HINT}"
    state = _torch_load(path, map_location, fix)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not an ltkit checkpoint (a dict); {fix}.")
    return state


# =========================================================================== claiming a run directory
_HELD: dict[str, tuple[int, int]] = {}  # run directories held: resolved path -> (lock file descriptor, holder pid)


def _key(run_dir: Path) -> str:
    return os.path.normcase(str(Path(run_dir).resolve()))


def _holder(text: str) -> str:
    """'process 123 on host h (started 2024-01-01 12:00:00)' from a lock file's content."""
    try:
        info = json.loads(text)
        return f"process {int(info['pid'])} on host {info['host']} (started {info['started']})"
    except (ValueError, TypeError, KeyError):
        return "another process (its lock file names no pid yet)"


def _lock_info() -> bytes:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started=started)).encode()


def _pid_alive(pid: int) -> bool | None:
    """Whether a process of this host runs ``pid`` (``None``: cannot tell on this platform)."""
    if os.name != "posix":
        return None  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read(path: Path, wait_s: float = 0.0) -> str:
    """A lock file's text; with ``wait_s``, give a holder that has just taken the lock time to write its JSON."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            text = ""
        if text.strip() or time.monotonic() >= deadline:
            return text
        time.sleep(0.02)


def _in_use(run_dir: Path, holder: str) -> RunInUseError:
    return RunInUseError(f"run {run_dir} is in use by {holder}: two runs cannot write one record; wait for it to "
                         "finish, stop it, or choose another run name (--name).")


def _open_lock(run_dir: Path) -> int:
    """An open, flock-ed lock file of ``run_dir`` (created as needed); the holder's JSON is not written yet."""
    lock = run_dir / LOCK_NAME
    while True:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except FileNotFoundError:  # the empty folder of a released run was removed in between
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(run_dir, _holder(_read(lock, wait_s=1.0))) from None
        except OSError as err:
            os.close(fd)
            raise RunInUseError(f"cannot lock {lock} ({err.strerror}): this file system does not support file "
                                "locks; choose an out_dir on a local disk.") from err
        if _same_file(fd, lock):  # else it was released (and unlinked) between open and flock: try again
            return fd
        os.close(fd)


def _open_lock_exclusive(run_dir: Path) -> int:
    """The fallback without ``fcntl``: create the lock file exclusively; a stale one is refused with its fix."""
    lock = run_dir / LOCK_NAME
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        text = _read(lock)
        try:
            info = json.loads(text)
            stale = info["host"] == socket.gethostname() and _pid_alive(int(info["pid"])) is False
        except (ValueError, TypeError, KeyError):
            stale = False
        if stale:
            raise RunInUseError(f"run {run_dir} has a stale lock: {_holder(text)} is no longer running (killed?); "
                                f"if no other run uses this folder, remove the lock ({shlex.join(['rm', str(lock)])}) "
                                "and run again.") from None
        raise RunInUseError(f"run {run_dir} is in use by {_holder(text)}: two runs cannot write one record; wait "
                            f"for it to finish, or, if that process is gone, remove {lock} and run again.") from None


def _lock_run_dir(run_dir: Path) -> None:
    key = _key(run_dir)
    if key in _HELD:
        raise RunInUseError(f"run {run_dir} is already held by this process (pid {os.getpid()}): a run of this name "
                            "is still going on here; wait for it, or call ltkit.runs.release_run_dir on it if it was "
                            "abandoned.")
    try:
        fd = _open_lock(run_dir) if fcntl is not None else _open_lock_exclusive(run_dir)
    except PermissionError as err:
        raise checks.InputError(f"cannot write into {run_dir} ({err.strerror}): choose an out_dir you can write "
                                "to.") from err
    except RunExistsError:  # RunInUseError: a FileExistsError too, but with its own message
        raise
    except (NotADirectoryError, FileExistsError) as err:  # a file where out_dir (or a folder above it) should be
        blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), run_dir.parent)
        raise checks.InputError(f"cannot create the run folder {run_dir}: {blocker} is a file, not a folder; choose "
                                "another out_dir (--out-dir).") from err
    previous = os.read(fd, 4096).decode(errors="replace")
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, _lock_info())
    _chmod(run_dir / LOCK_NAME)
    _HELD[key] = (fd, os.getpid())
    if previous.strip():
        warnings.warn(f"{run_dir / LOCK_NAME}: took over the stale lock of {_holder(previous)}, which ended "
                      "without releasing it (killed or crashed); no other process holds this run.", stacklevel=3)


def release_run_dir(run_dir: str | os.PathLike) -> None:
    """Release the lock :func:`prepare_run_dir` took (idempotent; nothing happens when this process holds none).

    An empty run directory (a run that stopped before writing anything) is removed.
    """
    run_dir = Path(run_dir)
    fd, pid = _HELD.pop(_key(run_dir), (None, None))
    if fd is None:
        return
    lock = run_dir / LOCK_NAME
    try:
        if pid == os.getpid() and _same_file(fd, lock):  # a forked child only drops its copy of the descriptor
            lock.unlink()
    finally:
        os.close(fd)
    if pid != os.getpid():
        return
    try:
        run_dir.rmdir()
    except OSError:  # not empty: a record
        pass


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        release_run_dir(key)


# =========================================================================== preparing a run directory
def _is_ours(path: Path) -> bool:
    """Whether an entry of a run directory is one ltkit writes, by name: a record file, a method's record
    (:data:`METHOD_FILES`), a snapshot (``snapshot-NNNN.pt``), the lock, a temp file — plain files only."""
    name = path.name
    if path.is_symlink() or not path.is_file():
        return False
    if name.startswith("."):
        return name == LOCK_NAME or name.endswith(".tmp")
    return name in RECORD_FILES or name in METHOD_FILES or re.fullmatch(r"snapshot-\d{4,}\.pt", name) is not None


def _check_is_run(run_dir: Path) -> None:
    """Refuse a path that is not a folder, or a non-empty folder that is not an ltkit run (ltkit never writes there)."""
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise RunExistsError(f"{run_dir} exists and is not a folder (a file or a link); choose another run name "
                             "(--name) or out_dir.")
    if not run_dir.is_dir():
        return
    entries = list(run_dir.iterdir())
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in entries if not _is_ours(p))
    records = [p for p in entries if p.name in RECORD_FILES]
    if foreign or (entries and not records and any(not p.name.startswith(".") for p in entries)):
        shown = ", ".join(foreign[:3] or [p.name for p in entries][:3])
        raise RunExistsError(f"{run_dir} exists and is not an ltkit run (it holds {shown}, ...); ltkit neither writes "
                             "into it nor deletes it: choose another run name (--name) or out_dir.")


def _clear(run_dir: Path) -> None:
    """Delete every record file of a run directory (it was checked to hold nothing else); keep the lock."""
    for p in run_dir.iterdir():
        if p.name != LOCK_NAME and _is_ours(p):
            p.unlink()


def _stored_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    fix = f"retrain it with {OVERWRITE_HINT} or choose another run name"
    if not path.is_file():
        raise RecordError(f"{run_dir} has a checkpoint or result but no config.json: the record is damaged; {fix}.")
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise RecordError(f"{path} is not an ltkit run config (a JSON object with a 'config' object); {fix}.")
    return meta["config"]


def prepare_run_dir(run_dir: str | os.PathLike, config: dict, if_exists: str = "error",
                    defaults: dict | None = None) -> str:
    """Claim the run directory; returns 'new', 'resume' or 'finished'.

    ``if_exists``: 'error' (default) refuses an existing run; 'resume'
    continues it from its checkpoint (or returns 'finished' when it has a
    result), provided its config matches, and starts afresh ('new') a run that
    stopped before its first checkpoint; 'overwrite' deletes its record files
    first.  A field missing from the stored config (a run written before the
    field existed) matches its value in ``defaults``.

    On 'new' and 'resume' this process holds the run's lock until
    :func:`release_run_dir` (call it in a ``finally``); 'finished' and every
    error leave no lock.  A folder that is not an ltkit run is never written
    into nor deleted.
    """
    checks.choice("if_exists", if_exists, IF_EXISTS)
    run_dir = Path(run_dir)
    check_run_name(run_dir.name)
    if ".." in run_dir.parts:
        raise checks.InputError(f"run directory {run_dir} goes up a folder ('..'); pass an out_dir and a plain run "
                                "name.")
    _check_is_run(run_dir)
    _lock_run_dir(run_dir)
    try:
        status = _claim(run_dir, config, if_exists, defaults or {})
    except BaseException:
        release_run_dir(run_dir)
        raise
    if status == "finished":
        release_run_dir(run_dir)
    return status


def _claim(run_dir: Path, config: dict, if_exists: str, defaults: dict) -> str:
    """The decision, taken while holding the lock."""
    names = {p.name for p in run_dir.iterdir() if p.name != LOCK_NAME and not p.name.startswith(".")}
    if not names or if_exists == "overwrite":
        _clear(run_dir)
        return "new"
    finished, checkpointed = "result.json" in names, "checkpoint.pt" in names
    if if_exists == "error":
        what, verb = (("is finished", "get its record") if finished
                      else ("has a checkpoint", "continue it from there") if checkpointed
                      else ("stopped before its first checkpoint", "start it afresh"))
        raise RunExistsError(f"run {run_dir} already exists and {what}; pass {_RESUME} to {verb}, {OVERWRITE_HINT} to "
                             "delete it and start again, or choose another run name (--name).")
    if not finished and not checkpointed:  # failed before its first checkpoint: nothing to continue
        _clear(run_dir)
        return "new"
    stored = {**defaults, **_stored_config(run_dir)}
    differing = config_differences(stored, config)
    if differing:
        raise checks.InputError(
            f"cannot resume {run_dir}: its config differs in {differing} "
            f"(stored {[stored.get(k) for k in differing]}, now {[config.get(k) for k in differing]}); "
            f"choose another run name (--name) or {OVERWRITE_HINT}."
        )
    return "finished" if finished else "resume"


# fields that do not change a run's result (``continue_from`` / ``snapshot_epochs``: a continued run's record is
# the one training from scratch gives)
VOLATILE_FIELDS = {"if_exists", "progress", "out_dir", "name", "label", "num_workers", "device", "threads",
                   "continue_from", "snapshot_epochs"}


def config_differences(stored: dict, config: dict, ignore: Iterable[str] = VOLATILE_FIELDS) -> list[str]:
    """The fields, except ``ignore``, in which two run configs differ (sorted)."""
    ignore = set(ignore)
    return sorted(k for k in set(stored) | set(config) if k not in ignore and stored.get(k) != config.get(k))


# =========================================================================== reading records
def read_json(path: str | os.PathLike) -> Any:
    """A JSON record file; a missing or damaged one is a one-line error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingRecordError(f"{path} does not exist: is this a run directory written by ltkit?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path} is not valid JSON ({err}); the run record is truncated or damaged: retrain it "
                          f"with {OVERWRITE_HINT}, or delete the folder.") from err


def _row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = isinstance(row, dict) and isinstance(row.get("epoch"), int) and not isinstance(row["epoch"], bool)
    return row if ok else None


def _short(values: list[int], shown: int = 10) -> str:
    return ", ".join(map(str, values[:shown])) + (", ..." if len(values) > shown else "")


def read_history(run_dir: str | os.PathLike, strict: bool = True) -> list[dict]:
    """Per-epoch metrics rows (JSON objects with an integer ``epoch``), in file order.

    A last line without its newline that does not parse is a row being written
    (or cut by a kill) and is skipped.  Any other line that is not such a row
    is damage: :class:`RecordError` naming the file and line, or, with
    ``strict=False``, skipped.
    """
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        if strict:
            raise RecordError(f"{path} is not UTF-8 text ({err}); the record is damaged: retrain it with "
                              f"{OVERWRITE_HINT}.") from err
        text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _row(line)
        if row is not None:
            rows.append(row)
        elif strict and lineno < len(lines):  # a complete line (the last element has no newline)
            raise RecordError(f"{path}, line {lineno}: not a JSON object with an integer 'epoch' ({line[:60]!r}); "
                              f"the record is damaged: delete the line, or retrain the run with {OVERWRITE_HINT}.")
    return rows


def append_history(run_dir: str | os.PathLike, row: dict) -> None:
    """Append one row (one ``write`` of one line, mode :data:`FILE_MODE`).

    After a line cut by a kill the row starts on a line of its own.
    """
    path = Path(run_dir) / "history.jsonl"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        cut = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (("\n" if cut else "") + json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)
    _chmod(path)


def truncate_history(run_dir: str | os.PathLike, last_epoch: int) -> list[dict]:
    """Make ``history.jsonl`` hold exactly the rows of epochs ``0 .. last_epoch`` (the checkpoint's), and return them.

    What resume needs: rows of epochs that were not checkpointed, a line cut by
    a kill, damaged lines and repeated rows (the last one wins) are dropped.  A
    row of an epoch the checkpoint covers that is missing cannot be rebuilt:
    :class:`RecordError` naming the file and the epochs.
    """
    path = Path(run_dir) / "history.jsonl"
    by_epoch = {row["epoch"]: row for row in read_history(run_dir, strict=False) if 0 <= row["epoch"] <= last_epoch}
    missing = [e for e in range(last_epoch + 1) if e not in by_epoch]
    if missing:
        raise RecordError(f"{path} lacks the rows of epoch(s) {_short(missing)}, which the checkpoint (epoch {last_epoch}) "
                          f"covers: the file was cut or edited; restore it, or retrain the run with {OVERWRITE_HINT}.")
    rows = [by_epoch[e] for e in range(last_epoch + 1)]
    atomic_write_bytes(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return rows


def load_run(run_dir: str | os.PathLike) -> dict:
    """A run record: name, dir, config, env, history and (when finished) result.

    A damaged record is a one-line error naming the file: :class:`RecordError`
    (or :class:`MissingRecordError` without ``config.json``).
    """
    run_dir = Path(run_dir)
    meta = read_json(run_dir / "config.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or not isinstance(meta.get("env", {}), dict):
        raise RecordError(f"{run_dir / 'config.json'} is not an ltkit run config (a JSON object with a 'config' "
                          f"object); the record is damaged: retrain it with {OVERWRITE_HINT}, or delete the folder.")
    result_path = run_dir / "result.json"
    result = read_json(result_path) if result_path.is_file() else None
    if result_path.is_file() and not isinstance(result, dict):  # ``null`` too: a finished run's result is an object
        raise RecordError(f"{result_path} is not a JSON object; the record is damaged: retrain it with {OVERWRITE_HINT}.")
    history = read_history(run_dir)
    final = result.get("final_epoch") if result else None
    if isinstance(final, int):  # a finished run has the row of every epoch
        missing = sorted(set(range(final + 1)) - {row["epoch"] for row in history})
        if missing:
            raise RecordError(f"{run_dir / 'history.jsonl'} lacks the rows of epoch(s) {_short(missing)} of this "
                              f"finished run (the file was cut or edited); restore it, or retrain with {OVERWRITE_HINT}.")
    return dict(
        name=run_dir.name,
        dir=str(run_dir),
        config=meta["config"],
        env=meta.get("env", {}),
        history=history,
        result=result,
    )


def load_runs(root: str | os.PathLike = "runs", finished_only: bool = True, strict: bool = False) -> list[dict]:
    """Every run under ``root`` (sorted by name).

    A damaged run is skipped with a warning naming it (``strict=True``: the
    error is raised instead).  Folders holding no record file are not runs.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    records = []
    for run_dir in sorted(root.iterdir()):
        if run_dir.name.startswith(".") or not run_dir.is_dir():
            continue
        if not any((run_dir / f).is_file() for f in ("config.json", "result.json", "history.jsonl")):
            continue
        try:
            record = load_run(run_dir)
        except (checks.LtkitError, OSError) as err:
            if strict:
                raise
            warnings.warn(f"skipped the damaged run {run_dir}: {err}", stacklevel=2)
            continue
        if record["result"] is not None or not finished_only:
            records.append(record)
    return records
