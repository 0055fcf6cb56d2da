"""``python -m ltkit <command>``: the kit's commands on any OS, no ``make`` needed (the Makefile delegates here).

    python -m ltkit demo                      the leaderboard (ltkit.demo; its options follow: --seeds 0 1)
    python -m ltkit lab                       JupyterLab on notebooks/ (as root: --allow-root; installs nothing)
    python -m ltkit test                      pytest over tests/ + nbval-lax over notebooks/ (what `make test` runs)
    python -m ltkit pack-runs [ARCHIVE]       runs/ and notebooks/runs/ -> one .tar.gz / .zip
    python -m ltkit unpack-runs ARCHIVE       ... and back (checked; never replaces a different run silently)
    python -m ltkit pack-room [FOLDER]        wheels + the kit + runs + install.py, for laptops with no network
    python -m ltkit install-room FOLDER       install such a folder offline (what its install.py runs)

Everything but ``demo`` imports the standard library only (:mod:`ltkit.room`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import room

PASSTHROUGH = ("demo", "test")  # every argument after the command goes to ltkit.demo / pytest as it is


def _lab_args(argv: Sequence[str]) -> tuple[str | None, bool, list[str]]:
    """Split ``lab``'s own options (``--notebooks DIR``, ``--print``) from JupyterLab's, keeping the order of the rest."""
    notebooks, dry, rest = None, False, []
    it = iter(argv)
    for token in it:
        if token == "--notebooks":
            notebooks = next(it, None)
            if notebooks is None:
                raise SystemExit("ltkit lab: --notebooks needs a folder")
        elif token.startswith("--notebooks="):
            notebooks = token.split("=", 1)[1]
        elif token == "--print":
            dry = True
        else:
            rest.append(token)
    return notebooks, dry, rest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ltkit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.add_parser("demo", help="the leaderboard of every method (options: python -m ltkit demo --help)", add_help=False)
    sub.add_parser("test", help="pytest over tests/ and nbval-lax over notebooks/ (extra options go to pytest)",
                   add_help=False)
    sub.add_parser("lab", add_help=False,
                   help="JupyterLab on notebooks/ (--notebooks DIR; --print shows the command; other options go to "
                        "JupyterLab, e.g. --port=9999)")

    p = sub.add_parser("pack-runs", help="pack the finished runs into one archive")
    p.add_argument("archive", nargs="?", default=room.DEFAULT_RUNS_ARCHIVE,
                   help=f".tar.gz, .tar or .zip (default {room.DEFAULT_RUNS_ARCHIVE})")
    p.add_argument("--base", default=".", help="the folder holding runs/ and notebooks/ (default: here)")
    p.add_argument("--root", action="append", dest="roots", metavar="RUNS_DIR",
                   help="a runs folder to pack, relative to --base (repeatable; default: runs and notebooks/runs)")
    p.add_argument("--include-unfinished", action="store_true", help="also pack runs without result.json")

    p = sub.add_parser("unpack-runs", help="unpack a runs archive (checked first; reports the pre-built runs)")
    p.add_argument("archive", nargs="?", default=room.DEFAULT_RUNS_ARCHIVE)
    p.add_argument("--dest", default=".", help="the folder holding runs/ and notebooks/ (default: here)")
    _conflict_options(p)

    p = sub.add_parser("pack-room", help="one folder for a room of laptops with no network")
    p.add_argument("out", nargs="?", default=room.DEFAULT_ROOM, help=f"the folder to make (default {room.DEFAULT_ROOM})")
    p.add_argument("--project", default=".", help="the kit's source folder (default: here)")
    p.add_argument("--platform", help="the laptops' wheel platform, e.g. manylinux_2_28_x86_64, win_amd64, "
                                      "macosx_11_0_arm64 (default: this machine's)")
    p.add_argument("--python-version", help="the laptops' Python, e.g. 3.11 (default: this one)")
    p.add_argument("--implementation", help="e.g. cp (with --platform)")
    p.add_argument("--abi", help="e.g. cp311 (with --platform)")
    torch = p.add_mutually_exclusive_group()
    torch.add_argument("--torch-wheel-dir", metavar="DIR",
                       help="use the torch / torchvision wheels in DIR (e.g. CPU-only ones, see docs/INSTALL.md) "
                            "instead of PyPI's (on Linux: the CUDA build, several GB)")
    torch.add_argument("--no-torch", action="store_true", help="leave torch / torchvision out (the laptops have them)")
    p.add_argument("--extras", action="append", default=[], metavar="EXTRA",
                   help="also the optional dependencies EXTRA (dev: pytest, nbval, playwright)")
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--runs-archive", metavar="FILE", help="put this runs archive in the room (default: pack this "
                                                             "project's finished runs, if any)")
    runs.add_argument("--no-runs", action="store_true", help="no pre-built runs")
    p.add_argument("--no-download", action="store_true", help="only the kit's wheel (add the other wheels yourself)")
    p.add_argument("--no-build-isolation", action="store_true",
                   help="build the kit's wheel with this environment's setuptools (no network for the build)")
    p.add_argument("--reuse", action="store_true", help="add to an existing folder (wheels there are kept)")

    p = sub.add_parser("install-room", help="install a room folder with no network (a venv, the kit, notebooks, runs)")
    p.add_argument("room", help="the folder made by pack-room")
    p.add_argument("--dest", default=room.DEFAULT_WORKSHOP,
                   help=f"the workshop folder to make: notebooks/, runs, .venv (default {room.DEFAULT_WORKSHOP})")
    env = p.add_mutually_exclusive_group()
    env.add_argument("--venv", help="the virtual environment (created if missing; default DEST/.venv)")
    env.add_argument("--current", action="store_true", help="install into this Python's environment instead")
    p.add_argument("--extras", action="append", default=[], metavar="EXTRA", help="e.g. dev (if the room has its wheels)")
    p.add_argument("--no-deps", action="store_true", help="install the kit only (its dependencies are there already)")
    _conflict_options(p)
    return parser


def _conflict_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--skip-existing", dest="on_conflict", action="store_const", const="skip",
                       help="keep your own version of runs that differ from the archive's")
    group.add_argument("--overwrite", dest="on_conflict", action="store_const", const="overwrite",
                       help="replace runs that differ with the archive's")
    p.set_defaults(on_conflict="error")


def _demo(argv: Sequence[str]) -> int:
    try:
        from . import demo
    except ModuleNotFoundError as err:
        raise room.RoomError(room.missing_module_hint(err)) from None
    demo.main(list(argv))
    return 0


def _torch_option(args: argparse.Namespace) -> str:
    if args.no_torch:
        return "none"
    if args.torch_wheel_dir:
        return args.torch_wheel_dir
    return "pypi"


def run(argv: Sequence[str]) -> int:
    """Dispatch one command; returns the exit status."""
    argv = list(argv)
    if argv and argv[0] == "demo":
        return _demo(argv[1:])
    if argv and argv[0] == "test":
        return room.run_tests(argv[1:])
    if argv and argv[0] == "lab":
        notebooks, dry, rest = _lab_args(argv[1:])
        if dry:
            room.log(" ".join(room.lab_command(notebooks or room.default_notebooks(), extra=rest)))
            return 0
        return room.lab(notebooks, rest)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "pack-runs":
        room.log(room.pack_runs(args.archive, args.base, args.roots, include_unfinished=args.include_unfinished).message())
    elif args.command == "unpack-runs":
        room.log(room.unpack_runs(args.archive, args.dest, on_conflict=args.on_conflict).message())
    elif args.command == "pack-room":
        target = room.Target(args.platform, args.python_version, args.implementation, args.abi)
        runs: bool | str = False if args.no_runs else (args.runs_archive or True)
        report = room.pack_room(args.out, project=args.project, target=target, torch=_torch_option(args),
                                extras=args.extras, runs=runs, download=not args.no_download,
                                isolated_build=not args.no_build_isolation, reuse=args.reuse)
        room.log(report.message())
    elif args.command == "install-room":
        report = room.install_room(args.room, args.dest, venv=args.venv, current=args.current, extras=args.extras,
                                   no_deps=args.no_deps, on_conflict=args.on_conflict)
        room.log(report.message())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point: errors of the kit print one line (``ltkit: error: ...``) and exit with status 1."""
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except room.RoomError as err:
        print(f"ltkit: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
