"""The command line of the training engine: every :class:`ltkit.train.TrainConfig` field is an option.

    python -m ltkit.train --preset digits-lt --loss bs --seed 1
    torchrun --nproc_per_node=8 -m ltkit.train --preset cifar100-lt --loss ldam-drw

(``python -m ltkit.cli`` is the same.)  Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import train


def _parse_value(text: str, annotation: str) -> Any:
    if text == "None" and "None" in annotation:
        return None
    if annotation.startswith(("dict", "list")):
        return json.loads(text)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ltkit.train",
        description="Train on a long-tailed data set (also under torchrun). Every TrainConfig field is an option.",
    )
    parser.add_argument("--preset", default="digits-lt", help=f"one of: {', '.join(train.PRESETS)} (default digits-lt)")
    parser.add_argument("--resume", action="store_true", help="continue (or reuse) the run of the same name")
    parser.add_argument("--config-json", help="a JSON file of TrainConfig fields (used by ltkit.launch)")
    for f in dataclasses.fields(train.TrainConfig):
        annotation = str(f.type)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS,
                            type=lambda text, a=annotation: _parse_value(text, a), help=f"({annotation})")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = vars(build_parser().parse_args(argv))
    base = train.PRESETS.get(args.pop("preset"), None)
    if base is None:
        raise SystemExit(f"unknown preset; choose one of: {', '.join(train.PRESETS)}")
    if path := args.pop("config_json", None):
        base = {**base, **json.loads(Path(path).read_text())}
    if args.pop("resume"):
        args["if_exists"] = "resume"
    try:
        record = train.fit(train.make_config(**{**base, **args}))
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"ltkit.train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if int(os.environ.get("RANK", "0")) == 0:
        r = record["result"]
        print(json.dumps(dict(run=record["dir"], **{k: r[k] for k in ("overall", "many", "medium", "few", "worst")})))
    return record


if __name__ == "__main__":
    main()
