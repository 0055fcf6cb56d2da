"""The room kit (ltkit.room, python -m ltkit): pre-built runs, the lab / test commands, the offline install, no CUDA assumed."""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import site
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from ltkit import room

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("runs.tar.gz", "runs.zip", "runs.tar")


# ------------------------------------------------------------------------------------------------ a runs/ tree


def _write(path: Path, data: bytes, mode: int = 0o644, mtime: float = 1_700_000_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, (mtime, mtime))


def _run(folder: Path, seed: int, finished: bool = True) -> None:
    _write(folder / "config.json", json.dumps({"config": {"seed": seed}, "env": {}}).encode())
    _write(folder / "history.jsonl", b'{"epoch": 0}\n{"epoch": 1}\n')
    _write(folder / "checkpoint.pt", os.urandom(3000 + seed), mode=0o600)
    if finished:
        _write(folder / "result.json", json.dumps({"overall": 0.9 + seed / 100}).encode())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A kit folder with make demo's runs (runs/) and the notebooks' runs (notebooks/runs/)."""
    base = tmp_path / "project"
    for seed in (0, 1, 2):
        _run(base / "runs/leaderboard/digits-lt" / f"CE-s{seed}", seed)
    _run(base / "notebooks/runs/03_cmo/BS-s0", 0)
    _run(base / "notebooks/runs/CE-s0", 0)
    _run(base / "runs/leaderboard/digits-lt/killed-s0", 0, finished=False)  # no result.json: left out
    _write(base / "runs/leaderboard.png", b"\x89PNG" + os.urandom(500))
    _write(base / "runs/tool.sh", b"#!/bin/sh\n", mode=0o755)
    _write(base / "runs/__pycache__/x.pyc", b"cache")  # never packed
    _write(base / "runs/leaderboard/digits-lt/CE-s0/.result.json.abc.tmp", b"half-written")  # never packed
    _write(base / "notebooks/01_imbalance_profiles.ipynb", b"{}")
    return base


def _files(base: Path) -> dict[str, tuple[bytes, int, int]]:
    """{relative path: (bytes, mode bits, mtime)} of every file under base's runs folders."""
    out = {}
    for root in ("runs", "notebooks/runs"):
        for p in sorted((base / root).rglob("*")):
            if p.is_file() and p.name != room.MANIFEST:
                out[p.relative_to(base).as_posix()] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode), int(p.stat().st_mtime))
    return out


# ------------------------------------------------------------------------------------------------ pack / unpack


@pytest.mark.parametrize("name", FORMATS)
def test_pack_unpack_round_trip_keeps_files_modes_and_times(project: Path, tmp_path: Path, name: str):
    archive = tmp_path / name
    packed = room.pack_runs(archive, project)
    assert packed.runs == ["notebooks/runs/03_cmo/BS-s0", "notebooks/runs/CE-s0", "runs/leaderboard/digits-lt/CE-s0",
                           "runs/leaderboard/digits-lt/CE-s1", "runs/leaderboard/digits-lt/CE-s2"]
    assert packed.unfinished == ["runs/leaderboard/digits-lt/killed-s0"]
    assert "packed 5 finished runs" in packed.message() and "left out 1 unfinished" in packed.message()

    dest = tmp_path / "laptop"
    report = room.unpack_runs(archive, dest)
    expected = {k: v for k, v in _files(project).items()
                if "killed-s0" not in k and "__pycache__" not in k and not k.endswith(".tmp")}
    got = _files(dest)
    assert set(got) == set(expected)
    for path, (data, mode, mtime) in expected.items():
        assert got[path][0] == data, path
        assert got[path][1] == mode, (path, oct(got[path][1]), oct(mode))
        assert abs(got[path][2] - mtime) <= 2, path  # zip stores times to 2 s
    assert report.added == packed.runs and report.files == len(expected)
    message = report.message()
    assert "using 5 pre-built runs" in message and "to train it yourself" in message
    assert "runs/leaderboard/digits-lt/: 3" in message and "notebooks/runs/03_cmo/: 1" in message


def test_prebuilt_note_names_the_unpacked_runs(project: Path, tmp_path: Path):
    room.pack_runs(tmp_path / "r.tar.gz", project)
    dest = tmp_path / "laptop"
    room.unpack_runs(tmp_path / "r.tar.gz", dest)
    _run(dest / "runs/leaderboard/digits-lt/mine-s0", 0)  # trained here: not pre-built
    note = room.prebuilt_note(dest / "runs/leaderboard/digits-lt")
    assert note.startswith("using 3 pre-built runs in ") and "delete a run's folder" in note
    assert len(room.prebuilt_runs(dest / "notebooks/runs")) == 2
    assert [p.name for p in room.prebuilt_runs(dest / "notebooks/runs/03_cmo")] == ["BS-s0"]
    shutil.rmtree(dest / "runs/leaderboard/digits-lt/CE-s1")  # "delete it to train it yourself"
    assert len(room.prebuilt_runs(dest / "runs")) == 2
    assert room.prebuilt_note(project / "runs") is None  # trained there, nothing unpacked


def test_a_grid_says_which_runs_it_reuses_and_which_came_pre_built(project: Path, tmp_path: Path):
    from ltkit import launch

    room.pack_runs(tmp_path / "r.tar.gz", project)
    dest = tmp_path / "laptop"
    room.unpack_runs(tmp_path / "r.tar.gz", dest)
    folder = dest / "runs/leaderboard/digits-lt"
    _run(folder / "mine-s0", 0)  # trained here
    grid = [folder / f"CE-s{seed}" for seed in (0, 1, 2)] + [folder / "mine-s0", folder / "todo-s0"]
    note = launch.reuse_note(grid)
    assert note.startswith(f"using 4 of 5 runs already finished in {folder.as_posix()}/ (3 pre-built, from a runs "
                           "archive); delete a run's folder (e.g. ")
    assert "(3 pre-built" not in launch.reuse_note([project / "runs/leaderboard/digits-lt/CE-s0"])
    assert launch.reuse_note([folder / "todo-s0"]) is None  # nothing to reuse: nothing to say


def test_unpack_twice_writes_nothing_the_second_time(project: Path, tmp_path: Path):
    room.pack_runs(tmp_path / "r.zip", project)
    room.unpack_runs(tmp_path / "r.zip", tmp_path / "d")
    again = room.unpack_runs(tmp_path / "r.zip", tmp_path / "d")
    assert again.files == 0 and again.added == [] and len(again.present) == 5
    assert "using 5 pre-built runs" in again.message() and "already there, identical" in again.message()


def test_unpack_never_replaces_a_different_run_silently(project: Path, tmp_path: Path):
    archive = tmp_path / "r.tar.gz"
    room.pack_runs(archive, project)
    dest = tmp_path / "d"
    mine = dest / "runs/leaderboard/digits-lt/CE-s1"
    _run(mine, 1)
    (mine / "result.json").write_text('{"overall": 0.5}')  # my own run of that name
    half = dest / "notebooks/runs/CE-s0"
    _run(half, 0, finished=False)  # a half-trained run: the archive's would be mixed into it
    before = _files(dest)

    with pytest.raises(room.RunsArchiveError, match="2 runs .* different contents; nothing was unpacked") as err:
        room.unpack_runs(archive, dest)
    assert "runs/leaderboard/digits-lt/CE-s1" in str(err.value) and "--skip-existing" in str(err.value)
    assert _files(dest) == before  # nothing written, not even the runs that do not conflict

    kept = room.unpack_runs(archive, dest, on_conflict="skip")
    assert kept.kept == ["notebooks/runs/CE-s0", "runs/leaderboard/digits-lt/CE-s1"] and len(kept.added) == 3
    assert (mine / "result.json").read_text() == '{"overall": 0.5}' and not (half / "result.json").exists()
    assert "kept your own version of 2 runs" in kept.message()

    replaced = room.unpack_runs(archive, dest, on_conflict="overwrite")
    assert replaced.replaced == ["notebooks/runs/CE-s0", "runs/leaderboard/digits-lt/CE-s1"]
    assert (mine / "result.json").read_bytes() == (project / "runs/leaderboard/digits-lt/CE-s1/result.json").read_bytes()
    assert {p.name for p in half.iterdir()} == {"config.json", "history.jsonl", "checkpoint.pt", "result.json"}


def _tar(path: Path, *entries: tarfile.TarInfo | tuple[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _zip(path: Path, name: str, data: bytes = b"x", mode: int = stat.S_IFREG | 0o644) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("runs/ok/config.json", b"{}")
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


GOOD = ("runs/ok/config.json", b"{}")
MALICIOUS = {
    "dotdot": lambda p: _tar(p / "a.tar.gz", GOOD, ("runs/../../evil.txt", b"pwned")),
    "leading-dotdot": lambda p: _tar(p / "a.tar.gz", ("../runs/evil.txt", b"pwned")),
    "absolute": lambda p: _tar(p / "a.tar.gz", GOOD, (str(p / "runs/evil.txt"), b"pwned")),
    "windows-drive": lambda p: _tar(p / "a.tar.gz", ("C:/runs/evil.txt", b"pwned")),
    "backslash": lambda p: _tar(p / "a.tar.gz", ("runs\\..\\..\\evil.txt", b"pwned")),
    "outside-runs": lambda p: _tar(p / "a.tar.gz", GOOD, ("notebooks/01_imbalance_profiles.ipynb", b"pwned")),
    "symlink": lambda p: _tar(p / "a.tar.gz", GOOD, _link("runs/ok/result.json", "/etc/passwd")),
    "symlink-dir": lambda p: _tar(p / "a.tar.gz", _link("runs/escape", ".."), ("runs/escape/evil.txt", b"pwned")),
    "hardlink": lambda p: _tar(p / "a.tar.gz", GOOD, _link("runs/ok/h", "/etc/passwd", tarfile.LNKTYPE)),
    "device": lambda p: _tar(p / "a.tar.gz", GOOD, _link("runs/ok/dev", "", tarfile.CHRTYPE)),
    "zip-dotdot": lambda p: _zip(p / "a.zip", "runs/../../evil.txt"),
    "zip-absolute": lambda p: _zip(p / "a.zip", "/tmp/evil.txt"),
    "zip-symlink": lambda p: _zip(p / "a.zip", "runs/ok/result.json", b"/etc/passwd", stat.S_IFLNK | 0o777),
}


@pytest.mark.parametrize("kind", MALICIOUS)
def test_unpack_refuses_a_malicious_archive_before_writing_anything(tmp_path: Path, kind: str):
    made = tmp_path / "made"
    made.mkdir()
    archive = MALICIOUS[kind](made)
    dest = tmp_path / "box" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(room.RunsArchiveError):
        room.unpack_runs(archive, dest)
    assert not any(dest.iterdir()), "nothing may be written, not even the harmless entries"
    assert not list(tmp_path.rglob("evil.txt"))


def test_unpack_does_not_write_through_a_link_in_the_target(project: Path, tmp_path: Path):
    room.pack_runs(tmp_path / "r.tar.gz", project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "runs").symlink_to(elsewhere)
    with pytest.raises(room.RunsArchiveError, match="is a link"):
        room.unpack_runs(tmp_path / "r.tar.gz", dest)
    assert not any(elsewhere.iterdir())


def test_pack_refuses_links_and_empty_folders(project: Path, tmp_path: Path):
    (project / "runs/leaderboard/digits-lt/CE-s0/linked.pt").symlink_to("/etc/hostname")
    with pytest.raises(room.RunsArchiveError, match="is a link"):
        room.pack_runs(tmp_path / "r.tar.gz", project)
    assert not (tmp_path / "r.tar.gz").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(room.RoomError, match="no finished runs"):
        room.pack_runs(tmp_path / "e.tar.gz", tmp_path / "empty")
    with pytest.raises(room.RoomError, match=r"\.tar\.gz, \.tgz, \.tar or \.zip"):
        room.pack_runs(tmp_path / "r.rar", project)


def test_python_m_ltkit_pack_and_unpack_runs(project: Path, tmp_path: Path):
    def ltkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ltkit", *args], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)

    packed = ltkit("pack-runs", str(tmp_path / "r.zip"), cwd=project)
    assert packed.returncode == 0, packed.stderr
    assert "packed 5 finished runs" in packed.stdout
    dest = tmp_path / "d"
    dest.mkdir()
    out = ltkit("unpack-runs", str(tmp_path / "r.zip"), cwd=dest)
    assert out.returncode == 0, out.stderr
    assert "using 5 pre-built runs" in out.stdout
    (dest / "runs/leaderboard/digits-lt/CE-s2/result.json").write_text("{}")
    refused = ltkit("unpack-runs", str(tmp_path / "r.zip"), cwd=dest)
    assert refused.returncode == 1 and refused.stderr.startswith("ltkit: error: 1 runs")


# ------------------------------------------------------------------------------------------------ lab, test, make


def test_lab_command_adds_allow_root_as_root_and_listens_in_a_container():
    base = ["py", "-m", "jupyterlab", "notebooks"]
    assert room.lab_command("notebooks", python="py", as_root=False, container=False) == base
    assert room.lab_command("notebooks", python="py", as_root=True, container=False) == base + ["--allow-root"]
    assert room.lab_command("notebooks", python="py", as_root=True, container=True, extra=["--ip=127.0.0.1"]) == \
        base + ["--allow-root", "--ip=0.0.0.0", "--no-browser", "--ip=127.0.0.1"]  # the user's options come last and win
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    assert ("--allow-root" in room.lab_command()) == as_root
    printed = subprocess.run([sys.executable, "-m", "ltkit", "lab", "--print", "--port=9999"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    words = printed.stdout.split()
    assert words[1:4] == ["-m", "jupyterlab", str(Path("notebooks"))] and words[-1] == "--port=9999"
    assert ("--allow-root" in words) == as_root


def test_test_command_is_what_make_test_always_ran():
    assert room.test_command(python="py") == ["py", "-m", "pytest", "tests", "notebooks", "--nbval-lax",
                                              "--nbval-current-env", "-p", "no:cacheprovider"]
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_commands_import_no_third_party_package():
    """pack / unpack / install-room run from the kit's wheel before anything is installed (the room's install.py)."""
    code = "import sys, ltkit.__main__, ltkit.room; print(sorted(m for m in ('torch', 'numpy', 'pytest') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_delegates_and_reinstalls_only_when_asked(tmp_path: Path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").write_text("#!/bin/sh\n")
    (venv / "bin/python").chmod(0o755)

    def dry(*targets: str, venv_dir: Path = venv) -> str:
        # -W: as if a `git pull` had just changed pyproject.toml and the constraints
        out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "-W", ".ci/constraints.txt", f"VENV={venv_dir}",
                              *targets], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    out = dry("demo", "test", "lab", "pack-runs", "unpack-runs", "room")
    assert "pip install" not in out
    for command in ("demo", "test", "lab", "pack-runs ltkit-runs.tar.gz", "unpack-runs ltkit-runs.tar.gz",
                    "pack-room ltkit-room"):
        assert f"{venv}/bin/python -m ltkit {command}" in out
    assert "pip install" in dry("install")  # explicit: always
    assert "pip install" in dry("lab", venv_dir=tmp_path / "fresh")  # a fresh clone: the first call installs


# ------------------------------------------------------------------------------------------------ the room kit


def _fake_wheel(path: Path, name: str, version: str, requires: list[str]) -> Path:
    wheel = path / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return wheel


def test_download_commands_for_pypi_no_torch_and_cpu_torch_wheels(tmp_path: Path):
    kit = _fake_wheel(tmp_path, "ltkit", "0.1.0", ["torch>=2.4", "torchvision>=0.19", "numpy>=1.24",
                                                    'pytest>=8; extra == "dev"'])
    torch_dir = tmp_path / "cpu"
    torch_dir.mkdir()
    (torch_dir / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    (torch_dir / "torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    target = room.Target("manylinux_2_28_x86_64", "3.11", "cp", "cp311")
    common = ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
              "--implementation", "cp", "--abi", "cp311"]

    [pypi] = room.download_commands(kit, tmp_path / "w", target=target, constraints="c.txt", python="py")
    assert pypi[:3] == ["py", "-m", "pip"] and "download" in pypi and all(a in pypi for a in common)
    assert pypi[-3:] == ["--constraint", "c.txt", f"ltkit @ {kit.resolve().as_uri()}"]

    [none] = room.download_commands(kit, tmp_path / "w", target=target, torch="none", python="py")
    assert none[-1:] == ["numpy>=1.24"] and not any("torch" in a for a in none)
    [dev] = room.download_commands(kit, tmp_path / "w", torch="none", extras=["dev"], python="py")
    assert dev[-2:] == ["numpy>=1.24", "pytest>=8"]

    [cpu] = room.download_commands(kit, tmp_path / "w", target=target, torch=torch_dir, python="py")
    assert cpu[-5:] == ["--find-links", str(torch_dir.resolve()), "torch==2.13.0+cpu", "torchvision==0.28.0+cpu",
                        f"ltkit @ {kit.resolve().as_uri()}"]
    with pytest.raises(room.RoomError, match="no torch wheel"):
        room.download_commands(kit, tmp_path / "w", torch=tmp_path / "w")
    (torch_dir / "torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").unlink()
    with pytest.raises(room.RoomError, match="no torchvision wheel .* torchvision::nms"):
        room.download_commands(kit, tmp_path / "w", torch=torch_dir)


def test_a_manylinux_target_accepts_the_older_manylinux_wheels():
    platforms = room.expand_platform("manylinux_2_28_x86_64")
    assert platforms[0] == "manylinux_2_28_x86_64" and platforms[-1] == "manylinux1_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64"} <= set(platforms)
    assert room.expand_platform("win_amd64") == ["win_amd64"]
    args = room.Target("manylinux_2_28_aarch64", "3.11").pip_args()
    assert args.count("--platform") == 27 and args[-2:] == ["--python-version", "3.11"]


def test_pack_runs_warns_about_runs_that_store_absolute_paths(project: Path, tmp_path: Path):
    run = project / "runs/leaderboard/digits-lt/CE-s1/config.json"
    run.write_text(json.dumps({"config": {"method_params": {"synthetic": "/home/me/ltkit/checkpoints/s.pt"}}}))
    report = room.pack_runs(tmp_path / "r.tar.gz", project)
    assert report.absolute == {"runs/leaderboard/digits-lt/CE-s1": ["/home/me/ltkit/checkpoints/s.pt"]}
    assert "warning: 1 runs store absolute paths" in report.message()
    assert stat.S_IMODE((tmp_path / "r.tar.gz").stat().st_mode) == 0o666 & ~room._umask()  # not mkstemp's 0600


def _dependency_view(tmp_path: Path) -> Path:
    """This environment's packages without ltkit: a fresh venv sees them through a .pth file, as if installed there."""
    view = tmp_path / "deps-view"
    view.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            if entry.name.lower().startswith(("ltkit", "__editable__")) or entry.suffix == ".pth":
                continue
            if not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    return view


@pytest.mark.skipif(os.environ.get("LTKIT_SKIP_OFFLINE_INSTALL") == "1", reason="LTKIT_SKIP_OFFLINE_INSTALL=1")
def test_offline_install_of_a_room_kit(project: Path, tmp_path: Path):
    """A room kit (the kit's own wheel; the dependencies come from this environment) installs with --no-index.

    The real pack-room downloads every dependency too; docs/INSTALL.md has its measured sizes.  Here the
    kit's wheel is built without build isolation (no network), and a fresh venv sees the dependencies
    of this environment through a .pth file, so that pip's --no-index resolution is the real one.
    """
    started = time.time()
    room.pack_runs(tmp_path / "runs.tar.gz", project)
    try:
        report = room.pack_room(tmp_path / "room", project=ROOT, download=False, isolated_build=False,
                                runs=tmp_path / "runs.tar.gz")
    except room.RoomError as err:
        pytest.skip(f"cannot build the kit's wheel offline here: {err}")
    kit = sorted((tmp_path / "room/wheels").glob("ltkit-*.whl"))
    assert len(kit) == 1 and report.wheels == 1
    assert {"install.py", "install.sh", "install.bat", "room.json", "runs.tar.gz", "notebooks", "wheels"} <= \
        {p.name for p in (tmp_path / "room").iterdir()}
    assert sorted(p.name for p in (tmp_path / "room/notebooks").glob("*.ipynb")) == \
        sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    with zipfile.ZipFile(kit[0]) as zf:  # the package data the notebooks need ship in the wheel
        assert any(n.startswith("ltkit/checkpoints/") for n in zf.namelist())

    # the venv's own packages would shadow the view (ensurepip's old setuptools): it gets none, pip comes from the view
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True,
                          timeout=120)
    if made.returncode != 0:
        pytest.skip(f"cannot create a venv here: {made.stderr[-300:]}")
    python = room.venv_python(venv)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "ltkit-test-deps.pth").write_text(str(_dependency_view(tmp_path)) + "\n")

    workshop = tmp_path / "workshop"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    out = subprocess.run([sys.executable, str(tmp_path / "room/install.py"), "--venv", str(venv), "--dest", str(workshop)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "--no-index" in out.stdout and "using 5 pre-built runs" in out.stdout
    assert "Successfully installed ltkit-0.1.0" in out.stdout

    check = subprocess.run([str(python), "-c", textwrap.dedent("""
        import ltkit, ltkit.room, ltkit.train, ltkit.data
        print(ltkit.__file__)
        print(ltkit.room.prebuilt_note("runs/leaderboard/digits-lt"))
    """)], capture_output=True, text=True, timeout=120, env=env, cwd=workshop)
    assert check.returncode == 0, check.stderr[-3000:]
    location, note = check.stdout.splitlines()
    assert Path(location).resolve().is_relative_to(Path(purelib).resolve()), location  # the installed copy, not the clone
    assert note.startswith("using 3 pre-built runs")
    assert sorted(p.name for p in (workshop / "notebooks").glob("*.ipynb")) == \
        sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert time.time() - started < 120


# ------------------------------------------------------------------------------------------------ no CUDA assumed

HIDE_CUDA = """
import importlib, json, pkgutil, sys, tempfile
BLOCKED = {blocked!r}

class Hidden:
    # as if the CUDA-only packages were not installed (a CPU-only torch has none of them)
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name.startswith("nvidia_"):
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None
    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]
import torch
import ltkit
modules = [m.name for m in pkgutil.walk_packages(ltkit.__path__, "ltkit.")]
for name in modules:
    importlib.import_module(name)
from ltkit import train
torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as out:
    record = train.fit("digits-lt", epochs=1, out_dir=out, progress=False)
print(json.dumps(dict(modules=modules, cuda=torch.cuda.is_available(), device=record["env"]["device"],
                      overall=record["result"]["overall"],
                      loaded=sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))))
"""


def test_every_module_imports_and_trains_with_no_cuda_packages():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    code = HIDE_CUDA.format(blocked=set(room.CUDA_ONLY_MODULES))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"ltkit.train", "ltkit.room", "ltkit.__main__", "ltkit.demo"} <= set(result["modules"])
    assert result["cuda"] is False and result["device"] == "cpu" and result["loaded"] == []
    assert 0.0 < result["overall"] <= 1.0


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported when the file is imported: module level, also inside try / if / with, not inside functions."""
    names: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.append(node.module)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit([n for n in getattr(node, field, []) if isinstance(n, ast.stmt)]
                          + [s for h in getattr(node, field, []) if isinstance(h, ast.ExceptHandler) for s in h.body])

    visit(tree.body)
    return names


def test_no_module_imports_cuda_only_packages():
    sources = sorted((ROOT / "ltkit").rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        for name in _module_level_imports(ast.parse(text)):
            top = name.split(".")[0]
            assert top not in room.CUDA_ONLY_MODULES and not top.startswith("nvidia"), f"{path}: imports {name}"
        # anywhere, even inside a function: the kit never needs NVIDIA's Python packages
        for banned in ("import nvidia", "from nvidia", "import pynvml", "import cupy", "import pycuda"):
            assert banned not in text, f"{path}: {banned}"
