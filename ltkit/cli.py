"""The command line of the training engine: every :class:`ltkit.train.TrainConfig` field is an option.

    python -m ltkit.train --preset digits-lt --loss bs --seed 1
    torchrun --nproc_per_node=8 -m ltkit.train --preset cifar100-lt --loss ldam-drw

(``python -m ltkit.cli`` is the same.)  Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import checks, train


def _parse_value(text: str, annotation: str) -> Any:
    if text == "None" and "None" in annotation:
        return None
    if annotation.startswith(("dict", "list")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(f"expected JSON ({annotation}), got {text!r}") from None
    if annotation.startswith("bool"):
        if text.lower() not in ("true", "false", "1", "0"):
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return text.lower() in ("true", "1")
    for caster in ((int, float) if "int" in annotation else (float,) if "float" in annotation else ()):
        try:
            return caster(text)
        except ValueError:
            continue
    if "int" in annotation or "float" in annotation:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what was wrong and how to fix it, no usage block (``--help`` shows it)."""

    def error(self, message: str):
        hint = "python -m ltkit.train --help lists the options"
        if message.startswith("unrecognized arguments:"):
            options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            unknown = [w for w in message.split(":", 1)[1].split() if w.startswith("--")]
            close = [m for w in unknown for m in difflib.get_close_matches(w.split("=")[0], options, n=1)]
            if close:
                hint = f"did you mean {', '.join(close)}? ({hint})"
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message}; {hint}.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m ltkit.train",
        description="Train on a long-tailed data set (also under torchrun). Every TrainConfig field is an option.",
    )
    parser.add_argument("--preset", default="digits-lt", help=f"one of: {', '.join(train.PRESETS)} (default digits-lt)")
    parser.add_argument("--resume", action="store_true", help="continue (or reuse) the run of the same name")
    parser.add_argument("--config-json", help="a JSON file of TrainConfig fields (used by ltkit.launch)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    for f in dataclasses.fields(train.TrainConfig):
        annotation = str(f.type)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS,
                            type=lambda text, a=annotation: _parse_value(text, a), help=f"({annotation})")
    return parser


# The errors ltkit can explain in one line: its own, bad input, and data / file-system problems.
EXPLAINED = (checks.LtkitError, ValueError, TypeError, OSError, RuntimeError)


def main(argv: list[str] | None = None) -> dict:
    """Parse, train, print the result as one JSON line; an error prints one line and exits with status 2."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    debug = args.pop("debug")
    try:
        record = train.fit(_config(args))
    except EXPLAINED as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"ltkit.train: error: {message} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("ltkit.train: interrupted; the run keeps its last checkpoint: run the same command with --resume to "
              "continue it (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(130) from None
    if int(os.environ.get("RANK", "0")) == 0:
        r = record["result"]
        print(json.dumps(dict(run=record["dir"], **{k: r[k] for k in ("overall", "many", "medium", "few", "worst")})))
    return record


def _config(args: dict[str, Any]) -> train.TrainConfig:
    """The preset, then the --config-json file, then the options given (later wins)."""
    name = args.pop("preset")
    base = dict(train.PRESETS[checks.choice("preset", name, train.PRESETS)])
    if path := args.pop("config_json", None):
        base.update(_read_config_json(Path(path)))
    if args.pop("resume"):
        args["if_exists"] = "resume"
    return train.make_config(**{**base, **args})


def _read_config_json(path: Path) -> dict:
    try:
        fields = json.loads(path.read_text())
    except FileNotFoundError:
        raise checks.InputError(f"--config-json {path}: no such file.") from None
    except OSError as err:  # a folder, no permission, ...
        raise checks.InputError(f"--config-json {path} cannot be read ({err.strerror or err}); pass a JSON file of "
                                "TrainConfig fields.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise checks.InputError(f"--config-json {path} is not valid JSON ({err}); write an object of TrainConfig "
                                "fields, e.g. {\"loss\": \"bs\", \"epochs\": 10}.") from None
    if not isinstance(fields, dict):
        raise checks.InputError(f"--config-json {path} holds a {type(fields).__name__}; it must be a JSON object of "
                                "TrainConfig fields.")
    return fields


if __name__ == "__main__":
    main()
