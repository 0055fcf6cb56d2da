"""The room kit: pre-built runs, an offline install for a room of laptops, and the commands behind ``python -m ltkit``.

Three things a workshop needs and a fresh clone does not have:

* **Pre-built runs.**  :func:`pack_runs` packs the finished run folders under
  ``runs/`` (``make demo``) and ``notebooks/runs/`` (the notebooks) into one
  ``.tar.gz`` / ``.zip``; :func:`unpack_runs` puts them back on another machine.
  Every notebook reuses a finished run with the same config instead of training
  it, so the room starts with results; :func:`prebuilt_note` says how many runs
  came from an archive and what to delete to train them yourself.  Unpacking is
  strict: only regular files inside a ``runs/`` folder (no ``..``, no absolute
  paths, no links or devices), checked before anything is written, and an
  existing run folder that differs is never replaced silently.
* **An offline install.**  :func:`pack_room` makes one folder on a machine with
  network: ``wheels/`` (every dependency for the target platform, from
  ``pip download``, and the kit's own wheel), ``notebooks/``, ``runs.tar.gz``
  and ``install.py`` / ``install.sh`` / ``install.bat``.  On each laptop,
  ``python install.py`` (or ``python -m ltkit install-room <folder>``) runs
  :func:`install_room`: a venv, ``pip install --no-index --find-links wheels
  ltkit``, the notebooks and the runs, with no network at all.
* **Commands without make.**  :func:`lab_command` and :func:`test_command`
  build the command lines of ``python -m ltkit lab`` / ``test`` (the Makefile
  delegates to them); ``lab`` adds ``--allow-root`` as root and listens on all
  interfaces in a container, and never installs anything.

This module uses the standard library only: a room's ``install.py`` imports it
straight from the kit's wheel, before anything is installed.
"""

from __future__ import annotations

import dataclasses
import email.parser
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator, Sequence

RUN_RECORD = "config.json"  # a folder holding this file is a run folder (see ltkit.runs)
FINISHED = "result.json"  # ... and a finished one when it holds this one too
MANIFEST = ".ltkit-prebuilt.json"  # written into a runs/ folder by unpack_runs: which runs came from an archive
DEFAULT_RUNS_ROOTS = ("runs", "notebooks/runs")  # make demo's runs, the notebooks' runs
DEFAULT_RUNS_ARCHIVE = "ltkit-runs.tar.gz"
DEFAULT_ROOM = "ltkit-room"
DEFAULT_WORKSHOP = "ltkit-workshop"
NOTEBOOKS = "notebooks"
TEST_PATHS = ("tests", "notebooks")
# what `make test` has always run: pytest over tests/ and nbval (lax: only cells marked NBVAL_CHECK_OUTPUT are compared)
TEST_ARGS = ("--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider")
TORCH_PACKAGES = ("torch", "torchvision")
# Python packages that exist only with CUDA (the CUDA build of torch pulls the first two in on Linux)
CUDA_ONLY_MODULES = ("nvidia", "triton", "pynvml", "cupy", "pycuda", "tensorrt", "apex")
_SKIP_NAMES = {"__pycache__", ".ipynb_checkpoints", MANIFEST}
_TMP_FILE = re.compile(r"^\..*\.tmp$")  # ltkit.runs.atomic_write_bytes' temporary files
_COPY_CHUNK = 1 << 20

# the room folder
ROOM_WHEELS = "wheels"
ROOM_NOTEBOOKS = "notebooks"
ROOM_RUNS = "runs.tar.gz"
ROOM_INFO = "room.json"


class RoomError(RuntimeError):
    """A room kit or runs archive that cannot be made or used; the message says what to do."""


class RunsArchiveError(RoomError, ValueError):
    """An unsafe runs archive (a path escaping its folder, a link) or one that would overwrite a different run."""


def log(message: str) -> None:
    """Print one progress line (flushed: pip's output is interleaved with it)."""
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Pre-built runs: pack / unpack
# ---------------------------------------------------------------------------------------------------------------


def archive_format(path: str | os.PathLike) -> str:
    """``'tar.gz'``, ``'tar'`` or ``'zip'`` from the archive's file name."""
    name = str(path).lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".tar"):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    raise RoomError(f"{path}: name the archive .tar.gz, .tgz, .tar or .zip")


@dataclasses.dataclass
class RunsTree:
    """What :func:`run_files` found: files to pack and run folders (POSIX paths relative to the base folder)."""

    files: list[str]
    runs: list[str]
    unfinished: list[str]


def _skipped_name(name: str) -> bool:
    return name in _SKIP_NAMES or bool(_TMP_FILE.match(name))


def run_files(base: str | os.PathLike = ".", roots: Sequence[str] | None = None, *,
                 include_unfinished: bool = False, exclude: Iterable[str | os.PathLike] = ()) -> RunsTree:
    """The files under the runs folders ``roots`` (relative to ``base``; default: those of :data:`DEFAULT_RUNS_ROOTS` that exist).

    A run folder is a folder with a ``config.json``; one without ``result.json``
    (a run still training or killed) is left out unless ``include_unfinished``.
    Files outside run folders (plots, synthetic sets) are packed as they are;
    caches and temporary files are not.  A symbolic link anywhere is an error:
    an archive holds regular files only.
    """
    base = Path(base)
    roots = [r for r in DEFAULT_RUNS_ROOTS if (base / r).is_dir()] if roots is None else list(roots)
    excluded = {Path(p).resolve() for p in exclude}
    files: list[str] = []
    run_dirs: list[str] = []
    unfinished: list[str] = []
    for root in roots:
        rel_root = PurePosixPath(Path(root).as_posix())
        if rel_root.is_absolute() or ".." in rel_root.parts or "runs" not in rel_root.parts:
            raise RoomError(f"{root}: a runs folder is a folder named runs (or inside one) under {base}")
        top = base / root
        if top.is_symlink() or not top.is_dir():
            raise RoomError(f"{top}: not a folder" + (" (a link: pack the folder it points to)" if top.is_symlink() else ""))
        for folder, dirnames, filenames in os.walk(top):
            here = Path(folder)
            rel = PurePosixPath(here.relative_to(base).as_posix())
            for name in dirnames + filenames:
                if (here / name).is_symlink():
                    raise RunsArchiveError(f"{here / name} is a link: a runs archive holds regular files only "
                                           "(copy the file or folder it points to in its place)")
            dirnames[:] = sorted(d for d in dirnames if not _skipped_name(d))
            if RUN_RECORD in filenames and not any(str(rel).startswith(r + "/") for r in run_dirs):
                if FINISHED not in filenames and not include_unfinished:
                    unfinished.append(str(rel))
                    dirnames[:] = []
                    continue
                run_dirs.append(str(rel))
            for name in sorted(filenames):
                if _skipped_name(name) or (here / name).resolve() in excluded:
                    continue
                if not (here / name).is_file():
                    raise RunsArchiveError(f"{here / name}: not a regular file")
                files.append(str(rel / name))
    return RunsTree(files=files, runs=sorted(run_dirs), unfinished=sorted(unfinished))


@dataclasses.dataclass
class PackReport:
    """What :func:`pack_runs` wrote."""

    archive: Path
    files: int
    runs: list[str]
    unfinished: list[str]
    bytes: int
    absolute: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def message(self) -> str:
        lines = [f"packed {len(self.runs)} finished runs ({self.files} files) into {self.archive} "
                 f"({format_size(self.bytes)})"]
        if self.absolute:
            run, paths = next(iter(self.absolute.items()))
            lines.append(f"warning: {len(self.absolute)} runs store absolute paths in their config (e.g. {run}: "
                         f"{paths[0]}); where those paths differ (another machine, the kit installed elsewhere) "
                         "such a run is refused as 'config differs' instead of being reused")
        if self.unfinished:
            lines.append(f"left out {len(self.unfinished)} unfinished runs (no result.json; --include-unfinished "
                         f"packs them): {', '.join(self.unfinished[:5])}{' ...' if len(self.unfinished) > 5 else ''}")
        return "\n".join(lines)


def pack_runs(archive: str | os.PathLike = DEFAULT_RUNS_ARCHIVE, base: str | os.PathLike = ".",
              roots: Sequence[str] | None = None, *, include_unfinished: bool = False) -> PackReport:
    """Pack the finished runs under ``base``'s runs folders into one archive (see :func:`run_files`).

    The format follows the name (``.tar.gz``, ``.tar``, ``.zip``); paths inside
    are relative to ``base`` (``runs/...``, ``notebooks/runs/...``), file modes
    and modification times are kept, owners are not.  The archive is written
    to a temporary file and renamed into place.
    """
    archive, base = Path(archive), Path(base)
    kind = archive_format(archive)
    tree = run_files(base, roots, include_unfinished=include_unfinished, exclude=[archive])
    if not tree.files:
        where = ", ".join(roots or DEFAULT_RUNS_ROOTS)
        raise RoomError(f"no finished runs under {base.resolve()} ({where}): train some first (make demo, or run the notebooks)")
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if kind == "zip":
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for rel in tree.files:
                    info = zipfile.ZipInfo.from_file(base / rel, rel, strict_timestamps=False)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    with open(base / rel, "rb") as src, zf.open(info, "w") as dst:
                        shutil.copyfileobj(src, dst, _COPY_CHUNK)
        else:
            with tarfile.open(tmp, "w:gz" if kind == "tar.gz" else "w", format=tarfile.PAX_FORMAT) as tar:
                for rel in tree.files:
                    info = tar.gettarinfo(base / rel, arcname=rel)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(base / rel, "rb") as src:
                        tar.addfile(info, src)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; an archive is for sharing
        os.replace(tmp, archive)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return PackReport(archive, len(tree.files), tree.runs, tree.unfinished, archive.stat().st_size,
                      absolute_path_runs(base, tree.runs))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _absolute_paths(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _absolute_paths(v)
    elif isinstance(value, list):
        for v in value:
            yield from _absolute_paths(v)
    elif isinstance(value, str) and (value.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", value)):
        yield value


def absolute_path_runs(base: str | os.PathLike, run_dirs: Sequence[str]) -> dict[str, list[str]]:
    """``{run folder: absolute paths in its config}``: such runs are not reused on another machine.

    ``launch.run_grid`` / ``fit(if_exists='resume')`` reuse a run whose stored
    config equals the new one; a path of the packing machine (a data root, the
    kit's own files under site-packages) differs on a laptop, so the run is
    refused there ("its config differs") instead of being reused.
    """
    out = {}
    for run in run_dirs:
        try:
            config = json.loads((Path(base) / run / RUN_RECORD).read_text()).get("config", {})
        except (OSError, ValueError):
            continue
        paths = sorted(set(_absolute_paths(config)))
        if paths:
            out[run] = paths
    return out


@dataclasses.dataclass(frozen=True)
class Member:
    """One regular file of a runs archive: its safe relative path, mode bits, modification time and size."""

    path: PurePosixPath
    name: str  # the name as stored in the archive
    mode: int
    mtime: float
    size: int


def _relative_parts(name: str) -> list[str]:
    """The parts of an archive entry's name, refusing what could write outside the target folder."""
    if not name or "\x00" in name:
        raise RunsArchiveError(f"{name!r}: an empty or malformed name")
    if "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise RunsArchiveError(f"{name}: an absolute path or a Windows path; a runs archive holds relative paths only")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise RunsArchiveError(f"{name}: '..' would write outside the target folder")
    return parts


def safe_member_path(name: str) -> PurePosixPath:
    """``name`` as a relative path inside a ``runs`` folder, or :class:`RunsArchiveError`.

    Refused: absolute paths (``/x``, ``C:\\x``, ``\\\\server``), backslashes,
    ``..`` anywhere, empty names, NUL bytes, and files outside any folder
    named ``runs`` (a runs archive never writes a notebook or a module).
    """
    parts = _relative_parts(name)
    if not parts or "runs" not in parts[:-1]:
        raise RunsArchiveError(f"{name}: not inside a runs/ folder; a runs archive holds run folders only")
    return PurePosixPath(*parts)


def archive_members(archive: str | os.PathLike) -> list[Member]:
    """The files of a runs archive, every entry checked (:func:`safe_member_path`, regular files and folders only).

    Raises :class:`RunsArchiveError` on the first unsafe entry, before anything is written.
    """
    archive = Path(archive)
    kind = archive_format(archive)
    members: list[Member] = []
    if not archive.is_file():
        raise RoomError(f"{archive}: no such archive")
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise RunsArchiveError(f"{info.filename}: a link; a runs archive holds regular files only")
                if info.is_dir():
                    _relative_parts(info.filename)
                    continue
                if mode and not stat.S_ISREG(mode):
                    raise RunsArchiveError(f"{info.filename}: not a regular file (mode {oct(mode)})")
                mtime = time.mktime(info.date_time + (0, 0, -1))
                members.append(Member(safe_member_path(info.filename), info.filename,
                                      stat.S_IMODE(mode) or 0o644, mtime, info.file_size))
    else:
        with tarfile.open(archive) as tar:
            for info in tar.getmembers():
                if info.isdir():
                    _relative_parts(info.name)
                    continue
                if info.issym() or info.islnk():
                    raise RunsArchiveError(f"{info.name}: a link to {info.linkname}; a runs archive holds regular files only")
                if not info.isreg():
                    raise RunsArchiveError(f"{info.name}: not a regular file (a device, a fifo, ...)")
                members.append(Member(safe_member_path(info.name), info.name, stat.S_IMODE(info.mode),
                                      float(info.mtime), info.size))
    seen: set[PurePosixPath] = set()
    for m in members:
        if m.path in seen:
            raise RunsArchiveError(f"{m.name}: listed twice in {archive}")
        seen.add(m.path)
    return members


def _open_members(archive: Path, wanted: set[PurePosixPath] | None = None) -> Iterator[tuple[Member, BinaryIO]]:
    """``(member, readable file)`` for every file of the archive (or those in ``wanted``), in archive order."""
    by_name = {m.name: m for m in archive_members(archive)}
    if archive_format(archive) == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                m = by_name.get(info.filename)
                if m is not None and (wanted is None or m.path in wanted):
                    with zf.open(info) as f:
                        yield m, f
    else:
        with tarfile.open(archive) as tar:
            for info in tar:  # one sequential pass, also for a .tar.gz
                m = by_name.get(info.name)
                if m is not None and (wanted is None or m.path in wanted):
                    f = tar.extractfile(info)
                    assert f is not None
                    with f:
                        yield m, f


def _digest(f) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(_COPY_CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return _digest(f)


def run_folders(paths: Iterable[PurePosixPath]) -> dict[PurePosixPath, list[PurePosixPath]]:
    """``{run folder: its files}`` of a list of archive paths; a run folder is the outermost one holding ``config.json``."""
    paths = sorted(paths)
    candidates = sorted({p.parent for p in paths if p.name == RUN_RECORD}, key=lambda p: len(p.parts))
    roots: list[PurePosixPath] = []
    for c in candidates:
        if not any(c.is_relative_to(r) for r in roots):
            roots.append(c)
    out: dict[PurePosixPath, list[PurePosixPath]] = {r: [] for r in sorted(roots)}
    for p in paths:
        for r in roots:
            if p.is_relative_to(r):
                out[r].append(p)
                break
    return out


def runs_root(path: PurePosixPath) -> PurePosixPath:
    """The part of ``path`` up to its first ``runs`` component (``notebooks/runs/03_cmo/CE-s0`` -> ``notebooks/runs``)."""
    parts = path.parts
    return PurePosixPath(*parts[: parts.index("runs") + 1])


def _existing_files(folder: Path) -> set[PurePosixPath]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _skipped_name(d)]
        for name in filenames:
            if not _skipped_name(name):
                out.add(PurePosixPath(Path(dirpath, name).relative_to(folder).as_posix()))
    return out


def _target(dest: Path, rel: PurePosixPath) -> Path:
    """``dest / rel``, refusing to write through a link that already exists below ``dest``."""
    path = dest
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise RunsArchiveError(f"{path} is a link: unpacking will not write through it (remove it first)")
    return path


@dataclasses.dataclass
class UnpackReport:
    """What :func:`unpack_runs` did, by run folder (POSIX paths relative to ``dest``)."""

    archive: Path
    dest: Path
    added: list[str]
    present: list[str]
    kept: list[str]
    replaced: list[str]
    files: int

    @property
    def prebuilt(self) -> list[str]:
        """Every run of the archive now in place (written, replaced or already identical)."""
        return sorted(self.added + self.present + self.replaced)

    def message(self) -> str:
        lines = [f"unpacked {self.archive.name} into {self.dest}: {self.files} files written"]
        by_folder: dict[str, int] = {}
        for run in self.prebuilt:
            parent = str(PurePosixPath(run).parent)
            by_folder[parent] = by_folder.get(parent, 0) + 1
        if self.prebuilt:
            where = ", ".join(f"{folder}/: {n}" for folder, n in by_folder.items())
            example = self.prebuilt[0]
            lines.append(f"using {len(self.prebuilt)} pre-built runs ({where}); "
                         f"delete a run's folder (e.g. {example}) to train it yourself")
        if self.present:
            lines.append(f"{len(self.present)} of them were already there, identical")
        if self.kept:
            lines.append(f"kept your own version of {len(self.kept)} runs that differ from the archive's: "
                         + ", ".join(self.kept[:5]) + (" ..." if len(self.kept) > 5 else ""))
        if self.replaced:
            lines.append(f"replaced {len(self.replaced)} existing runs with the archive's: "
                         + ", ".join(self.replaced[:5]) + (" ..." if len(self.replaced) > 5 else ""))
        return "\n".join(lines)


ON_CONFLICT = ("error", "skip", "overwrite")


def unpack_runs(archive: str | os.PathLike = DEFAULT_RUNS_ARCHIVE, dest: str | os.PathLike = ".", *,
                on_conflict: str = "error") -> UnpackReport:
    """Unpack a runs archive made by :func:`pack_runs` into ``dest`` (the folder holding ``runs/`` / ``notebooks/``).

    Every entry is checked first (:func:`archive_members`); nothing is written
    if one is unsafe.  A run folder that exists already is left alone when it
    is identical to the archive's; when it differs (your own run, or one
    half-trained) ``on_conflict`` decides: ``'error'`` (default: nothing is
    written, the message lists the runs), ``'skip'`` (keep yours) or
    ``'overwrite'`` (replace it).  Files keep their mode bits (without
    set-id bits) and modification times.  Which runs came from the archive is
    recorded in ``<runs folder>/.ltkit-prebuilt.json`` (see :func:`prebuilt_note`).
    """
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict={on_conflict!r}; choose one of {ON_CONFLICT}")
    archive, dest = Path(archive), Path(dest)
    members = archive_members(archive)
    if not members:
        raise RoomError(f"{archive}: an empty archive")
    folders = run_folders(m.path for m in members)
    in_run = {p for files in folders.values() for p in files}
    loose = [m.path for m in members if m.path not in in_run]
    size = {m.path: m.size for m in members}
    # 1. what exists already, and is it the same?
    to_compare: set[PurePosixPath] = set()
    existing_runs: dict[PurePosixPath, set[PurePosixPath]] = {}
    for folder, files in folders.items():
        target = _target(dest, folder)
        if target.exists():
            have = {folder / p for p in _existing_files(target)} if target.is_dir() else {folder}
            existing_runs[folder] = have
            if have == set(files) and all((dest / p).stat().st_size == size[p] for p in files):
                to_compare.update(files)
    existing_loose = [p for p in loose if _target(dest, p).exists()]
    to_compare.update(p for p in existing_loose if (dest / p).is_file() and (dest / p).stat().st_size == size[p])
    same = {m.path for m, f in _open_members(archive, to_compare) if _digest(f) == _file_digest(dest / m.path)} \
        if to_compare else set()
    present = [f for f, files in folders.items() if f in existing_runs and set(files) <= same]
    conflicts = [f for f in existing_runs if f not in present] + [p for p in existing_loose if p not in same]
    if conflicts and on_conflict == "error":
        shown = "\n  ".join(str(c) for c in conflicts[:10]) + ("\n  ..." if len(conflicts) > 10 else "")
        raise RunsArchiveError(
            f"{len(conflicts)} runs (or files) of {archive.name} exist in {dest} with different contents; nothing "
            f"was unpacked:\n  {shown}\nDelete them, or keep yours (--skip-existing, on_conflict='skip'), or "
            "replace them with the archive's (--overwrite, on_conflict='overwrite').")
    # 2. write
    kept = conflicts if on_conflict == "skip" else []
    replaced = conflicts if on_conflict == "overwrite" else []
    skip = set(present) | set(kept) | {p for p in existing_loose if p in same}
    write = {p for p in (m.path for m in members)
             if not any(p == s or p.is_relative_to(s) for s in skip)}
    for c in replaced:
        target = _target(dest, c)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    written = 0
    for m, f in _open_members(archive, write):
        target = _target(dest, m.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(f, out, _COPY_CHUNK)
            os.chmod(tmp, m.mode & 0o777)
            os.utime(tmp, (m.mtime, m.mtime))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        written += 1
    added = [f for f in folders if f not in existing_runs]
    report = UnpackReport(archive, dest, sorted(map(str, added)), sorted(map(str, present)),
                          sorted(map(str, (c for c in kept if c in folders))),
                          sorted(map(str, (c for c in replaced if c in folders))), written)
    _record_prebuilt(dest, [PurePosixPath(r) for r in report.prebuilt], archive.name)
    return report


def _record_prebuilt(dest: Path, runs: Sequence[PurePosixPath], archive_name: str) -> None:
    by_root: dict[PurePosixPath, list[str]] = {}
    for run in runs:
        root = runs_root(run)
        by_root.setdefault(root, []).append(str(run.relative_to(root)))
    for root, names in by_root.items():
        path = dest / root / MANIFEST
        old = json.loads(path.read_text()) if path.is_file() else {}
        entry = {"runs": sorted(set(old.get("runs", [])) | set(names)), "archive": archive_name,
                 "unpacked": time.strftime("%Y-%m-%d %H:%M:%S")}
        path.write_text(json.dumps(entry, indent=1) + "\n")


def prebuilt_runs(runs_dir: str | os.PathLike = "runs") -> list[Path]:
    """The finished runs under ``runs_dir`` that came from a runs archive (and are still there)."""
    runs_dir = Path(runs_dir)
    absolute = runs_dir.resolve()
    for root in [absolute, *absolute.parents]:
        manifest = root / MANIFEST
        if manifest.is_file():
            names = json.loads(manifest.read_text()).get("runs", [])
            found = [root / n for n in names if (root / n / FINISHED).is_file()]
            return sorted(runs_dir / p.relative_to(absolute) for p in found if p.is_relative_to(absolute))
        if root.name == "runs":
            break
    return []


def prebuilt_note(runs_dir: str | os.PathLike = "runs") -> str | None:
    """One line for a notebook: ``"using 15 pre-built runs in runs/03_cmo; delete ... to train yourself"`` (None if none)."""
    found = prebuilt_runs(runs_dir)
    if not found:
        return None
    return (f"using {len(found)} pre-built runs in {Path(runs_dir).as_posix()}/ (unpacked from a runs archive); "
            f"delete a run's folder (e.g. {found[0].as_posix()}) to train it yourself")


# ---------------------------------------------------------------------------------------------------------------
# Commands: lab, test
# ---------------------------------------------------------------------------------------------------------------


def running_as_root() -> bool:
    """True for the superuser on POSIX (a room's container); False on Windows."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def in_container() -> bool:
    """True inside Docker / Podman (``/.dockerenv``, ``/run/.containerenv``, or ``$container`` set)."""
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists() or bool(os.environ.get("container"))


def default_notebooks(cwd: str | os.PathLike = ".") -> Path:
    """``notebooks/`` under ``cwd`` when it exists (a clone, a workshop folder), else ``cwd``."""
    return Path(cwd) / NOTEBOOKS if (Path(cwd) / NOTEBOOKS).is_dir() else Path(cwd)


def lab_command(notebook_dir: str | os.PathLike = NOTEBOOKS, *, python: str | None = None, as_root: bool | None = None,
                container: bool | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The JupyterLab command line of ``python -m ltkit lab``.

    As root, ``--allow-root`` (JupyterLab refuses to start as root without
    it); in a container, ``--ip=0.0.0.0 --no-browser`` (reachable through a
    published port, no browser to open); ``extra`` comes last, so it wins
    (``--ip=127.0.0.1``, ``--port=9999``).  ``as_root`` / ``container``
    default to :func:`running_as_root` / :func:`in_container`.
    """
    cmd = [python or sys.executable, "-m", "jupyterlab", str(notebook_dir)]
    if running_as_root() if as_root is None else as_root:
        cmd.append("--allow-root")
    if in_container() if container is None else container:
        cmd += ["--ip=0.0.0.0", "--no-browser"]
    return cmd + list(extra)


def test_command(*, python: str | None = None, paths: Sequence[str] = TEST_PATHS, extra: Sequence[str] = ()) -> list[str]:
    """What ``make test`` runs: pytest over ``tests`` and nbval-lax over every notebook, in one run."""
    return [python or sys.executable, "-m", "pytest", *paths, *TEST_ARGS, *extra]


def missing_module_hint(err: ModuleNotFoundError) -> str:
    """A one-line fix for a package missing from the environment (never installs it)."""
    return (f"{err.name or err} is not installed in this environment ({sys.executable}). Install the kit first: "
            "`make install` (a clone), `pip install -e .` (see docs/INSTALL.md), or the room kit's install.py.")


# ---------------------------------------------------------------------------------------------------------------
# The room kit: pack on a machine with network, install on laptops without
# ---------------------------------------------------------------------------------------------------------------


def format_size(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def tree_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def expand_platform(platform: str) -> list[str]:
    """The wheel platforms a machine of ``platform`` runs: ``manylinux_2_28_x86_64`` runs every older manylinux.

    ``pip download --platform`` takes one tag literally (pip 23 expands only
    the legacy ``manylinux2014`` / ``manylinux2010`` names and macOS), so the
    newer manylinux glibc levels are spelled out: 2_28 down to 2_5 with their
    legacy aliases.  Other platforms are returned as they are.
    """
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    glibc, arch = int(match.group(1)), match.group(2)
    out = []
    for minor in range(glibc, 4, -1):
        out.append(f"manylinux_2_{minor}_{arch}")
        if minor in _LEGACY_MANYLINUX:
            out.append(f"{_LEGACY_MANYLINUX[minor]}_{arch}")
    return out


@dataclasses.dataclass(frozen=True)
class Target:
    """The laptops' platform for ``pip download`` (all None: this machine's)."""

    platform: str | None = None  # manylinux_2_28_x86_64, win_amd64, macosx_11_0_arm64, ...
    python_version: str | None = None  # 3.11
    implementation: str | None = None  # cp
    abi: str | None = None  # cp311

    def pip_args(self) -> list[str]:
        args: list[str] = []
        for platform in expand_platform(self.platform) if self.platform else []:
            args += ["--platform", platform]
        for flag, value in (("--python-version", self.python_version), ("--implementation", self.implementation),
                            ("--abi", self.abi)):
            if value:
                args += [flag, value]
        return args

    def describe(self) -> dict:
        here = f"{sys.implementation.name} {sys.version_info.major}.{sys.version_info.minor}, {sys.platform}"
        return {"platform": self.platform or f"this machine's ({sys.platform})",
                "python_version": self.python_version or f"{sys.version_info.major}.{sys.version_info.minor}",
                "implementation": self.implementation, "abi": self.abi, "packed_on": here}


def run_command(cmd: Sequence[str], *, what: str, cwd: str | os.PathLike | None = None, quiet: bool = False) -> None:
    """Run ``cmd``; a failure is a :class:`RoomError` that shows the command (and its output when ``quiet``)."""
    log("$ " + " ".join(str(c) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, text=True,
                          stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)
    if proc.returncode != 0:
        tail = ("\n" + "\n".join((proc.stdout or "").splitlines()[-30:])) if quiet else ""
        raise RoomError(f"{what} failed (exit status {proc.returncode}){tail}")


_PROJECT_FILES = ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in", "LICENSE", "LICENSE.txt")


def build_kit_wheel(project: str | os.PathLike, wheel_dir: str | os.PathLike, *, isolated: bool = True,
                    python: str | None = None) -> Path:
    """``pip wheel --no-deps`` of the kit into ``wheel_dir``; returns the wheel.

    Builds from a copy of the sources (``pyproject.toml``, ``README.md``,
    ``ltkit/``) so that the working tree gets no ``build/`` folder.
    ``isolated=False`` (``--no-build-isolation``) builds with the setuptools of
    this environment, with no network.
    """
    project, wheel_dir = Path(project), Path(wheel_dir)
    if not (project / "pyproject.toml").is_file() or not (project / "ltkit").is_dir():
        raise RoomError(f"{project.resolve()}: not the kit's source folder (pyproject.toml and ltkit/)")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    before = set(wheel_dir.glob("ltkit-*.whl"))
    with tempfile.TemporaryDirectory(prefix="ltkit-src-") as tmp:
        src = Path(tmp) / "ltkit-src"
        src.mkdir()
        for name in _PROJECT_FILES:
            if (project / name).is_file():
                shutil.copy2(project / name, src / name)
        shutil.copytree(project / "ltkit", src / "ltkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        cmd = [python or sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "off", "--quiet", "--wheel-dir", str(wheel_dir.resolve())]
        run_command(cmd + ([] if isolated else ["--no-build-isolation"]) + [str(src)],
                    what="building the kit's wheel", quiet=True)
    built = sorted(set(wheel_dir.glob("ltkit-*.whl")) - before) or sorted(wheel_dir.glob("ltkit-*.whl"),
                                                                          key=lambda p: p.stat().st_mtime)
    if not built:
        raise RoomError(f"pip wheel wrote no ltkit wheel into {wheel_dir}")
    return built[-1]


def wheel_requirements(wheel: str | os.PathLike, extras: Sequence[str] = ()) -> list[str]:
    """The ``Requires-Dist`` of a wheel: the unconditional ones and those of ``extras`` (their marker dropped)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = email.parser.Parser().parsestr(zf.read(meta).decode())
    out = []
    for req in msg.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if extra and extra.group(1) not in extras:
            continue
        out.append(spec.strip() if extra else req.strip())
    return out


def requirement_name(req: str) -> str:
    """The normalised project name of a requirement string (``'Torch>=2.4' -> 'torch'``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not match:
        raise ValueError(f"not a requirement: {req!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def wheel_name_version(wheel: str | os.PathLike) -> tuple[str, str]:
    """``('torch', '2.13.0+cpu')`` from ``torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl``."""
    parts = Path(wheel).name.split("-")
    if len(parts) < 5 or not parts[-1].endswith(".whl"):
        raise RoomError(f"{wheel}: not a wheel file name")
    return re.sub(r"[-_.]+", "-", parts[0]).lower(), parts[1]


def torch_wheels(torch_dir: str | os.PathLike) -> list[Path]:
    """The torch / torchvision wheels in a folder (e.g. CPU-only ones from download.pytorch.org/whl/cpu)."""
    found = [p for p in sorted(Path(torch_dir).glob("*.whl")) if wheel_name_version(p)[0] in TORCH_PACKAGES]
    names = {wheel_name_version(p)[0] for p in found}
    hint = ("download both from the same index, e.g. `pip download torch==2.14.1 torchvision==0.29.1 --no-deps "
            "--only-binary=:all: --index-url https://download.pytorch.org/whl/cpu -d DIR` (see docs/INSTALL.md)")
    if "torch" not in names:
        raise RoomError(f"no torch wheel in {torch_dir}: {hint}")
    if "torchvision" not in names:
        raise RoomError(f"no torchvision wheel in {torch_dir}: torchvision must be built for the same torch (PyPI's "
                        "Linux torchvision, built for the CUDA torch, fails to import with a CPU-only torch: "
                        f"'operator torchvision::nms does not exist'); {hint}")
    return found


def download_commands(kit_wheel: Path, wheel_dir: Path, *, target: Target = Target(), torch: str | os.PathLike = "pypi",
                      extras: Sequence[str] = (), constraints: str | os.PathLike | None = None,
                      python: str | None = None) -> list[list[str]]:
    """The ``pip download`` command(s) that fill ``wheel_dir`` with every wheel the kit needs on ``target``.

    ``torch``: ``'pypi'`` (torch / torchvision from the index, as pip picks
    them for the platform: on Linux x86_64 that is the CUDA build and its
    ``nvidia-*`` wheels, several GB), ``'none'`` (leave torch / torchvision
    out: the laptops have their own), or a folder of torch / torchvision
    wheels you downloaded (the CPU-only ones): pinned to exactly those
    versions, their own dependencies still come from the index.
    """
    base = [python or sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
            "--dest", str(wheel_dir), "--only-binary=:all:", *target.pip_args()]
    spec = f"ltkit{'[' + ','.join(extras) + ']' if extras else ''} @ {kit_wheel.resolve().as_uri()}"
    if torch == "pypi":
        return [base + (["--constraint", str(constraints)] if constraints else []) + [spec]]
    if torch == "none":
        reqs = [r for r in wheel_requirements(kit_wheel, extras) if requirement_name(r) not in TORCH_PACKAGES]
        return [base + reqs]
    wheels = torch_wheels(torch)
    pins = [f"{name}=={version}" for name, version in map(wheel_name_version, wheels)]
    return [base + ["--find-links", str(Path(torch).resolve()), *pins, spec]]


def copy_notebooks(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[int, int]:
    """Copy a notebooks folder (no runs, checkpoints or caches); files that exist in ``dst`` are kept.

    Returns ``(copied, kept)``: a participant's edited notebook is never replaced.
    """
    src, dst = Path(src), Path(dst)
    copied = kept = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] == "runs" or any(_skipped_name(p) for p in rel.parts) or not path.is_file():
            continue
        target = dst / rel
        if target.exists():
            kept += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied += 1
    return copied, kept


INSTALL_PY = '''#!/usr/bin/env python3
"""Install this ltkit room kit with no network:  python install.py [--dest FOLDER] [--venv DIR | --current]

Creates FOLDER (default ./ltkit-workshop) with a virtual environment, the
notebooks and the pre-built runs, installing every package from ./wheels only
(pip install --no-index).  Then:  cd FOLDER  and  .venv/bin/python -m ltkit lab
(Windows: .venv\\\\Scripts\\\\python -m ltkit lab).  --help lists the options.
"""
import glob
import os
import sys

if sys.version_info < (3, 10):
    sys.exit("ltkit needs Python 3.10 or newer; this is " + sys.version.split()[0])
HERE = os.path.dirname(os.path.abspath(__file__))
WHEELS = sorted(glob.glob(os.path.join(HERE, "wheels", "ltkit-*.whl")))
if not WHEELS:
    sys.exit("no ltkit wheel under " + os.path.join(HERE, "wheels") + ": is this a folder made by `python -m ltkit pack-room`?")
sys.path.insert(0, WHEELS[-1])  # the installer is the kit's own code, read from its wheel: nothing to install first
from ltkit.__main__ import main  # noqa: E402

sys.exit(main(["install-room", HERE, *sys.argv[1:]]))
'''

INSTALL_SH = '''#!/bin/sh
# Install this ltkit room kit with no network: ./install.sh [--dest FOLDER] [--venv DIR | --current]
# (PYTHON=python3.11 ./install.sh picks the interpreter; the wheels are for the Python in room.json)
exec "${PYTHON:-python3}" "$(dirname "$0")/install.py" "$@"
'''

INSTALL_BAT = '''@echo off
rem Install this ltkit room kit with no network: install.bat [--dest FOLDER] [--venv DIR ^| --current]
where py >nul 2>nul
if %errorlevel%==0 (py -3 "%~dp0install.py" %*) else (python "%~dp0install.py" %*)
'''


def write_installers(room: str | os.PathLike) -> list[Path]:
    """``install.py`` (the installer, any OS), ``install.sh`` and ``install.bat`` (thin wrappers) in ``room``."""
    room = Path(room)
    paths = []
    for name, text, newline in (("install.py", INSTALL_PY, "\n"), ("install.sh", INSTALL_SH, "\n"),
                                ("install.bat", INSTALL_BAT, "\r\n")):
        path = room / name
        with open(path, "w", newline=newline) as f:
            f.write(text)
        if name != "install.bat":
            path.chmod(0o755)
        paths.append(path)
    return paths


@dataclasses.dataclass
class RoomReport:
    """What :func:`pack_room` made, with sizes in bytes."""

    room: Path
    wheels: int
    wheels_bytes: int
    torch_bytes: int  # torch, torchvision and the CUDA wheels they pull in (nvidia-*, triton)
    runs_bytes: int
    notebooks_bytes: int
    total_bytes: int
    seconds: float

    def message(self) -> str:
        return (f"room kit: {self.room}  ({format_size(self.total_bytes)} in all, packed in {self.seconds:.0f} s)\n"
                f"  wheels/     {self.wheels} wheels, {format_size(self.wheels_bytes)} "
                f"(torch stack {format_size(self.torch_bytes)}, the rest {format_size(self.wheels_bytes - self.torch_bytes)})\n"
                f"  runs.tar.gz {format_size(self.runs_bytes)}\n"
                f"  notebooks/  {format_size(self.notebooks_bytes)}\n"
                f"on each laptop, with no network:  python {self.room.name}/install.py --dest ltkit-workshop")


def _torch_stack(wheel: Path) -> bool:
    name = wheel_name_version(wheel)[0]
    return name in TORCH_PACKAGES or name.startswith("nvidia-") or name == "triton"


def pack_room(out: str | os.PathLike = DEFAULT_ROOM, *, project: str | os.PathLike = ".", target: Target = Target(),
              torch: str | os.PathLike = "pypi", extras: Sequence[str] = (), runs: bool | str | os.PathLike = True,
              download: bool = True, isolated_build: bool = True, reuse: bool = False) -> RoomReport:
    """Make the room folder ``out``: ``wheels/``, ``notebooks/``, ``runs.tar.gz``, ``install.py`` (+ .sh, .bat), ``room.json``.

    ``torch``: see :func:`download_commands`.  ``runs``: True packs the
    finished runs of ``project`` (none is fine: the room trains them), a path
    copies an existing runs archive, False leaves runs out.  ``download=False``
    skips ``pip download`` (the kit's wheel only: a test, or wheels you add
    yourself).  An existing non-empty ``out`` is refused unless ``reuse``
    (wheels already there are kept; pip skips them).
    """
    started = time.time()
    out, project = Path(out), Path(project)
    if out.exists() and any(out.iterdir()) and not reuse:
        raise RoomError(f"{out} exists and is not empty: delete it, or pass --reuse to add to it")
    wheel_dir = out / ROOM_WHEELS
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for old in wheel_dir.glob("ltkit-*.whl"):
        old.unlink()  # one kit wheel: the one built now
    kit = build_kit_wheel(project, wheel_dir, isolated=isolated_build)
    log(f"kit wheel: {kit.name}")
    if download:
        constraints = project / ".ci" / "constraints.txt"
        for cmd in download_commands(kit, wheel_dir, target=target, torch=torch, extras=extras,
                                     constraints=constraints if constraints.is_file() else None):
            run_command(cmd, what="pip download")
        cuda = [w.name for w in wheel_dir.glob("*.whl") if _torch_stack(w) and wheel_name_version(w)[0] not in TORCH_PACKAGES]
        if torch != "pypi" and cuda:
            log("warning: CUDA wheels (nvidia-*, triton) were downloaded: a dependency asked for them")
    runs_archive = out / ROOM_RUNS
    if runs is True:
        try:
            log(pack_runs(runs_archive, project).message())
        except RoomError as err:
            log(f"no pre-built runs in the room kit ({err})")
    elif runs:
        shutil.copy2(runs, runs_archive)
    if (project / NOTEBOOKS).is_dir():
        copy_notebooks(project / NOTEBOOKS, out / ROOM_NOTEBOOKS)
    write_installers(out)
    wheels = sorted(wheel_dir.glob("*.whl"))
    report = RoomReport(
        room=out, wheels=len(wheels), wheels_bytes=sum(w.stat().st_size for w in wheels),
        torch_bytes=sum(w.stat().st_size for w in wheels if _torch_stack(w)),
        runs_bytes=tree_size(runs_archive) if runs_archive.exists() else 0,
        notebooks_bytes=tree_size(out / ROOM_NOTEBOOKS) if (out / ROOM_NOTEBOOKS).exists() else 0,
        total_bytes=0, seconds=0.0)
    info = {"ltkit_wheel": kit.name, "target": target.describe(), "torch": str(torch), "extras": list(extras),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "wheels": report.wheels,
            "sizes": {"wheels": report.wheels_bytes, "torch_stack": report.torch_bytes, "runs": report.runs_bytes,
                      "notebooks": report.notebooks_bytes}}
    (out / ROOM_INFO).write_text(json.dumps(info, indent=1) + "\n")
    report.total_bytes = tree_size(out)
    report.seconds = time.time() - started
    return report


def venv_python(venv: str | os.PathLike) -> Path:
    """The interpreter of a virtual environment (``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere)."""
    venv = Path(venv)
    return venv / "Scripts" / "python.exe" if os.name == "nt" else venv / "bin" / "python"


def offline_install_command(python: str | os.PathLike, wheel_dir: str | os.PathLike, *, extras: Sequence[str] = (),
                            no_deps: bool = False) -> list[str]:
    """``pip install --no-index --find-links <wheels> ltkit``: only the room's wheels, no index, no pip config."""
    spec = f"ltkit{'[' + ','.join(extras) + ']' if extras else ''}"
    return [str(python), "-m", "pip", "install", "--isolated", "--no-index", "--find-links", str(wheel_dir),
            "--disable-pip-version-check", "--progress-bar", "off", *(["--no-deps"] if no_deps else []), spec]


@dataclasses.dataclass
class InstallReport:
    """What :func:`install_room` did."""

    dest: Path
    python: Path
    notebooks_copied: int
    notebooks_kept: int
    runs: UnpackReport | None
    seconds: dict[str, float]

    def message(self) -> str:
        lines = [f"installed into {self.python} ({', '.join(f'{k} {v:.0f} s' for k, v in self.seconds.items())})",
                 f"notebooks: {self.notebooks_copied} copied to {self.dest / NOTEBOOKS}"
                 + (f", {self.notebooks_kept} already there kept" if self.notebooks_kept else "")]
        lines.append(self.runs.message() if self.runs else "no pre-built runs in this room kit: the notebooks train theirs")
        python = self.python
        if python.is_absolute() == self.dest.is_absolute() and python.is_relative_to(self.dest):
            python = python.relative_to(self.dest)
        lines.append(f"start:  cd {self.dest}  and  {python} -m ltkit lab")
        return "\n".join(lines)


def _check_room_python(room: Path) -> None:
    info_path = room / ROOM_INFO
    if not info_path.is_file():
        return
    wanted = json.loads(info_path.read_text()).get("target", {}).get("python_version")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wanted and wanted != here:
        log(f"warning: this room kit's wheels are for Python {wanted}; this is Python {here}. If pip finds no "
            f"matching wheels, run install.py with a Python {wanted} (PYTHON=python{wanted} ./install.sh, or py -{wanted} install.py).")


def install_room(room: str | os.PathLike, dest: str | os.PathLike = DEFAULT_WORKSHOP, *,
                 venv: str | os.PathLike | None = None, current: bool = False, extras: Sequence[str] = (),
                 no_deps: bool = False, on_conflict: str = "error") -> InstallReport:
    """Install a room folder made by :func:`pack_room`, with no network.

    1. ``venv`` (default ``dest/.venv``; created with this Python unless it
       exists), or with ``current`` this Python's own environment;
    2. ``pip install --no-index --find-links room/wheels ltkit`` into it
       (``no_deps``: the dependencies are there already, e.g. a conda env);
    3. the notebooks into ``dest/notebooks`` (existing files kept);
    4. the pre-built runs into ``dest`` (:func:`unpack_runs` with ``on_conflict``).
    """
    room, dest = Path(room), Path(dest)
    wheel_dir = room / ROOM_WHEELS
    if not any(wheel_dir.glob("ltkit-*.whl")):
        raise RoomError(f"{room}: no wheels/ltkit-*.whl; make the folder with `python -m ltkit pack-room`")
    _check_room_python(room)
    seconds: dict[str, float] = {}
    dest.mkdir(parents=True, exist_ok=True)
    if current:
        python = Path(sys.executable)
    else:
        venv = Path(venv) if venv is not None else dest / ".venv"
        python = venv_python(venv)
        if not python.exists():
            started = time.time()
            try:
                run_command([sys.executable, "-m", "venv", str(venv)], what=f"creating the virtual environment {venv}")
            except RoomError as err:
                raise RoomError(f"{err}\nOn Debian / Ubuntu the venv module is a separate package (python3-venv); "
                                "or install into the current environment with --current.") from None
            seconds["venv"] = time.time() - started
    started = time.time()
    run_command(offline_install_command(python, wheel_dir.resolve(), extras=extras, no_deps=no_deps),
                what="the offline pip install")
    seconds["pip install"] = time.time() - started
    copied = kept = 0
    if (room / ROOM_NOTEBOOKS).is_dir():
        copied, kept = copy_notebooks(room / ROOM_NOTEBOOKS, dest / NOTEBOOKS)
    runs_report = None
    if (room / ROOM_RUNS).is_file():
        started = time.time()
        runs_report = unpack_runs(room / ROOM_RUNS, dest, on_conflict=on_conflict)
        seconds["runs"] = time.time() - started
    return InstallReport(dest, python, copied, kept, runs_report, seconds)


def launch(cmd: Sequence[str]) -> int:
    """Run a command in the foreground and return its exit status.

    On POSIX the command replaces this process (``os.execv``): Ctrl-C, a
    ``kill`` or a container's stop reach JupyterLab / pytest directly and no
    wrapper is left behind.  On Windows it runs as a child process.
    """
    log("$ " + " ".join(cmd))
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], list(cmd))
    try:
        return subprocess.call(list(cmd))
    except KeyboardInterrupt:
        return 130


def lab(notebook_dir: str | os.PathLike | None = None, extra: Sequence[str] = ()) -> int:
    """``python -m ltkit lab``: JupyterLab on the notebooks (installs nothing; see :func:`lab_command`)."""
    import importlib.util

    if importlib.util.find_spec("jupyterlab") is None:
        raise RoomError(missing_module_hint(ModuleNotFoundError(name="jupyterlab")))
    return launch(lab_command(notebook_dir or default_notebooks(), extra=extra))


def run_tests(extra: Sequence[str] = ()) -> int:
    """``python -m ltkit test``: exactly what ``make test`` runs (:func:`test_command`), from the kit's folder."""
    paths = [p for p in TEST_PATHS if Path(p).is_dir()]
    if not paths:
        raise RoomError(f"neither {' nor '.join(TEST_PATHS)} here ({Path.cwd()}): run it from the kit's folder")
    return launch(test_command(paths=paths, extra=extra))

