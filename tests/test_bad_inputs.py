"""Bad input and faults, tried as users would (issue 14): every case gets one clear line or is handled correctly.

Each case is a row of a table and its test id starts with its outcome:

* ``C-``  a clear error: the right exception type (an :class:`ltkit.checks.LtkitError`, or a ``ValueError`` /
  ``TypeError`` subclass), a one-line message naming the field / argument / file and a hint of the fix, and no
  file left behind (the folder holds exactly what it held before);
* ``H-``  handled correctly (the input is accepted and does the right thing, or a fault is recovered from);

Tables: (a) config fields through ``train.make_config`` / ``train.fit``; (b) the command line in real child
processes (exit status 2, exactly one line on stderr, nothing written); (c) public functions of profiles,
sampling, losses, metrics, models, data and runs; (d) data files in their real on-disk formats (CIFAR pickles,
split files and JPEG trees); (e) run folders; (f) faults: two processes starting one run name at once, SIGKILL
and SIGINT mid-epoch then ``--resume`` (bit-exact on CPU), a crafted ``checkpoint.pt``, a damaged split-file tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from ltkit import checks, cli, data, losses, metrics, models, profiles, runs, sampling, train, widgets

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model="mlp", epochs=1, progress=False, threads=1, checkpoint_every=1, eval_every=1)  # seconds at most
NAN, INF = float("nan"), float("inf")
EXPLAINABLE = (checks.LtkitError, ValueError, TypeError)

pytestmark = pytest.mark.usefixtures("one_thread")


# =========================================================================== helpers
def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> sha1 of the content ('dir' for a folder)."""
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha1(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def assert_clear(err: BaseException, needles: list[str], expected: type | tuple = EXPLAINABLE) -> str:
    """The exception is of the expected kind, its message is one line and names every needle (case-insensitive)."""
    assert isinstance(err, expected), f"{type(err).__name__}: {err}"
    assert isinstance(err, EXPLAINABLE), f"{type(err).__name__} is neither an LtkitError nor a ValueError/TypeError"
    message = str(err)
    assert message and "\n" not in message, f"not one line: {message!r}"
    assert "Traceback" not in message
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"
    return message


def raises_clear(call: Callable[[], Any], needles: list[str], expected: type | tuple = EXPLAINABLE) -> str:
    with pytest.raises(Exception) as info:
        call()
    return assert_clear(info.value, needles, expected)


def fit(out: Path, **overrides) -> dict:
    return train.fit("digits-lt", **{**TINY, "out_dir": str(out), **overrides})


def result_without_times(result: dict) -> dict:
    return {k: v for k, v in result.items() if "time" not in k}


def history_without_times(history: list[dict]) -> list[dict]:
    volatile = ("_s", "peak_memory")
    return [{k: v for k, v in row.items() if not k.endswith(volatile) and not k.startswith(volatile)}
            for row in history]


def model_state(run_dir: Path) -> dict:
    return runs.load_checkpoint(Path(run_dir) / "checkpoint.pt")


def assert_same_run(a: Path, b: Path) -> None:
    """Two finished runs ended in the same place: checkpoint tensors bit for bit, result and history minus times."""
    ra, rb = runs.load_run(a), runs.load_run(b)
    assert result_without_times(ra["result"]) == result_without_times(rb["result"])
    assert history_without_times(ra["history"]) == history_without_times(rb["history"])
    sa, sb = model_state(a), model_state(b)
    assert sa["epoch"] == sb["epoch"]
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    for key, value in sa["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], sb["optimizer"]["state"][key]["momentum_buffer"]), key


class Payload:
    """A pickle that runs code when loaded (a marker folder appears): what a crafted file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


# --------------------------------------------------------------------------- data in the real on-disk formats
def write_cifar10(root: Path, per_class: int = 20, test_per_class: int = 2) -> Path:
    """torchvision's CIFAR-10 python pickles, small (5 train batches, test batch, batches.meta)."""
    rng = np.random.RandomState(123)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name: str, labels: list[int]) -> None:
        entry = {"data": rng.randint(0, 256, size=(len(labels), 3072), dtype=np.uint8), "labels": labels,
                 "batch_label": name, "filenames": [f"{i}.png" for i in range(len(labels))]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    for i, chunk in enumerate(np.array_split(labels, 5), start=1):
        dump(f"data_batch_{i}", chunk.tolist())
    dump("test_batch", np.repeat(np.arange(10), test_per_class).tolist())
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)], "num_cases_per_batch": 40}, f, protocol=2)
    return folder


def rewrite_pickle(path: Path, change: Callable[[Any], Any]) -> None:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry = change(entry) or entry
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_image_tree(root: Path, counts: list[int], test_per_class: int = 1,
                     names: tuple[str, str] = ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt")) -> tuple[Path, Path]:
    """An ImageNet-LT style tree: JPEGs under train/ and test/, split files of 'relative/path label' lines."""
    lines: dict[str, list[str]] = {"train": [], "test": []}
    rng = np.random.RandomState(0)
    for split, per_class in (("train", counts), ("test", [test_per_class] * len(counts))):
        for label, n in enumerate(per_class):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rel = f"{split}/n{label:08d}/img_{i}.JPEG"
                Image.fromarray(rng.randint(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / rel, format="JPEG")
                lines[split].append(f"{rel} {label}")
    train_file, test_file = root / names[0], root / names[1]
    train_file.write_text("\n".join(lines["train"]) + "\n")
    test_file.write_text("\n".join(lines["test"]) + "\n")
    return train_file, test_file


def edit_line(path: Path, lineno: int, new: str | None) -> None:
    lines = path.read_text().splitlines()
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def cut_file(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# =========================================================================== (a) config fields
def case(id_: str, *values: Any, xfail: str | None = None, skip: str | None = None):
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    if skip:
        marks.append(pytest.mark.skip(reason=skip))
    return pytest.param(*values, id=id_, marks=marks)


TYPE, VALUE = checks.InputTypeError, checks.InputError

# (id, overrides or f(tmp_path) -> overrides, needles in the message, exception type, caught by make_config?)
CONFIG_CASES = [
    case("C-lr-nan", dict(lr=NAN), ["lr=nan", "finite"], VALUE, True),
    case("C-lr-inf", dict(lr=INF), ["lr=inf", "finite"], VALUE, True),
    case("C-lr-zero", dict(lr=0.0), ["lr=0", "> 0", "0.05 for the bundled"], VALUE, True),
    case("C-lr-negative", dict(lr=-1.0), ["lr=-1", "> 0"], VALUE, True),
    case("C-lr-string", dict(lr="0.1"), ["'lr'", "expects float"], TYPE, True),
    case("C-weight-decay-nan", dict(weight_decay=NAN), ["weight_decay=nan", "finite"], VALUE, True),
    case("C-weight-decay-negative", dict(weight_decay=-1e-4), ["weight_decay", ">= 0"], VALUE, True),
    case("C-momentum-one", dict(momentum=1.0), ["momentum=1.0", "[0, 1)"], VALUE, True),
    case("C-momentum-nan", dict(momentum=NAN), ["momentum=nan", "finite"], VALUE, True),
    case("C-step-gamma-zero", dict(step_gamma=0.0), ["step_gamma=0", "(0, 1]"], VALUE, True),
    case("C-step-gamma-two", dict(step_gamma=2.0), ["step_gamma=2", "(0, 1]"], VALUE, True),
    case("C-crop-padding-negative", dict(crop_padding=-3), ["crop_padding=-3", ">= 0"], VALUE, True),
    case("C-epochs-zero", dict(epochs=0), ["epochs=0", ">= 1"], VALUE, True),
    case("C-epochs-float", dict(epochs=2.0), ["'epochs'", "expects int"], TYPE, True),
    case("C-batch-size-zero", dict(batch_size=0), ["batch_size=0", ">= 1"], VALUE, True),
    case("C-batch-size-bool", dict(batch_size=True), ["'batch_size'", "expects int"], TYPE, True),
    case("C-milestones-string-item", dict(milestones=["a"]), ["milestones[0]", "integer", "epochs at which"], TYPE, True),
    case("C-milestones-float-item", dict(milestones=[1.5]), ["milestones[0]", "integer"], TYPE, True),
    case("C-milestones-negative", dict(milestones=[-1]), ["milestones[0]=-1", ">= 0"], VALUE, True),
    case("C-milestones-not-a-list", dict(milestones="160"), ["'milestones'", "expects list"], TYPE, True),
    case("C-few-above-many", dict(many=100, few=200), ["few=200 > many=100", "must not exceed", "many=100, few=20"],
         VALUE, True),
    case("C-many-negative", dict(many=-1, few=0), ["many=-1", ">= 0"], VALUE, True),
    case("C-imbalance-factor-nan", dict(imbalance_factor=NAN), ["imbalance_factor=nan", "finite"], VALUE, True),
    case("C-imbalance-factor-below-one", dict(imbalance_factor=0.5), ["imbalance_factor=0.5", ">= 1"], VALUE, True),
    case("C-imbalance-factor-string", dict(imbalance_factor="10"), ["'imbalance_factor'", "float"], TYPE, True),
    case("C-imbalance-factor-too-large", dict(imbalance_factor=1e9), ["class 3 has no images", "lower the imbalance factor"],
         VALUE, False),
    case("C-unknown-field", dict(epoch=3), ["unknown config field", "'epoch'", "valid fields"], VALUE, True),
    case("C-loss-params-unknown-key", dict(loss_params={"gamma_x": 1}), ["loss_params", "gamma_x", "accepted"], VALUE, True),
    case("C-loss-params-not-a-dict", dict(loss_params=[1]), ["'loss_params'", "expects dict"], TYPE, True),
    case("C-model-params-unknown-key", dict(model_params={"widht": 3}), ["model_params", "widht", "accepted", "hidden"],
         VALUE, True),
    case("C-sampler-params-unknown-key", dict(sampler="q-sample", sampler_params={"q": 1}), ["sampler_params", "'q'",
                                                                                           "accepted: r"], VALUE, True),
    case("C-method-params-unknown-key", dict(method="cmo", epochs=3, method_params={"bogus": 2}),
         ["method 'cmo'", "bogus", "valid: alpha"], VALUE, True),
    case("C-method-params-for-no-method", dict(method_params={"prob": 0.5}), ["'none'", "prob", "valid: none"], VALUE, True),
    case("C-method-params-out-of-range", dict(method="cmo", epochs=3, method_params={"prob": 2}),
         ["prob=2", "[0, 1]", "the paper uses 0.5"], VALUE, True),
    case("C-method-params-wrong-type", dict(method="cmo", epochs=3, method_params={"prob": "0.5"}),
         ["prob", "expects float"], TYPE, True),
    case("C-method-params-none-off-type", dict(method="cmo", epochs=3, method_params={"off_first": "2"}),
         ["off_first", "int | None"], TYPE, True),
    case("C-method-never-on", dict(method="cmo", epochs=1, method_params={"off_first": 1, "off_last": 1}),
         ["would never be on", "off_first=1", "lower them"], ValueError, False),
    case("C-unknown-method", dict(method="nope"), ["unknown method 'nope'", "choose one of", "cmo"], VALUE, True),
    case("C-unknown-loss", dict(loss="xent"), ["unknown loss 'xent'", "choose one of", "ldam-drw"], VALUE, True),
    case("C-unknown-model", dict(model="resnet9"), ["unknown model 'resnet9'", "choose one of", "resnet32"], VALUE, True),
    case("C-unknown-sampler", dict(sampler="balanced2"), ["unknown sampler 'balanced2'", "class-balanced"], VALUE, True),
    case("C-unknown-dataset", dict(dataset="mnist-lt"), ["unknown dataset 'mnist-lt'", "digits-lt"], VALUE, True),
    case("C-unknown-schedule", dict(schedule="linear"), ["unknown schedule 'linear'", "step, cosine"], VALUE, True),
    case("C-unknown-augment", dict(augment="mixup"), ["unknown augment 'mixup'", "crop-flip"], VALUE, True),
    case("C-unknown-device", dict(device="tpu"), ["unknown device 'tpu'", "auto, cpu, cuda"], VALUE, True),
    case("C-unknown-if-exists", dict(if_exists="replace"), ["unknown if_exists 'replace'", "resume"], VALUE, True),
    case("C-unknown-subset", dict(subset="random"), ["unknown subset 'random'", "shuffle, first"], VALUE, True),
    case("C-name-dotdot", dict(name="..", if_exists="overwrite"), ["run name '..'", "e.g."], VALUE, True),
    case("C-name-dot", dict(name=".", if_exists="overwrite"), ["run name '.'", "e.g."], VALUE, True),
    case("C-name-parent-path", dict(name="../x"), ["run name '../x'", "path separator"], VALUE, True),
    case("C-name-absolute", lambda tmp: dict(name=str(tmp / "elsewhere")), ["run name '/", "absolute paths"], VALUE, True),
    case("C-name-subfolder", dict(name="a/b"), ["run name 'a/b'", "sub-folders"], VALUE, True),
    case("C-name-empty", dict(name=""), ["run name ''", "is empty", "e.g."], VALUE, True),
    case("C-name-not-a-string", dict(name=3), ["'name'", "expects str"], TYPE, True),
    case("C-seed-negative", dict(seed=-1), ["seed=-1", ">= 0"], VALUE, True),
    case("C-eval-every-zero", dict(eval_every=0), ["eval_every=0", ">= 1"], VALUE, True),
    case("C-checkpoint-every-zero", dict(checkpoint_every=0), ["checkpoint_every=0", ">= 1"], VALUE, True),
    case("C-num-workers-negative", dict(num_workers=-1), ["num_workers=-1", ">= 0"], VALUE, True),
    case("C-nesterov-string", dict(nesterov="yes"), ["'nesterov'", "expects bool"], TYPE, True),
    case("C-amp-int", dict(amp=1), ["'amp'", "expects bool"], TYPE, True),
    case("C-verify-checksums-string", dict(verify_checksums="yes"), ["'verify_checksums'", "expects bool"], TYPE, True),
    case("C-data-root-int", dict(data_root=5), ["'data_root'", "expects str | None"], TYPE, True),
    case("C-label-int", dict(label=7), ["'label'", "expects str | None"], TYPE, True),
    case("C-out-dir-int", dict(out_dir=3), ["'out_dir'", "expects str"], TYPE, True),
    case("C-focal-gamma-nan", dict(loss="focal", loss_params={"gamma": NAN}), ["gamma=nan", "finite", "plain CE"],
         VALUE, False),
    case("C-ldam-margin-negative", dict(loss="ldam", loss_params={"max_margin": -1.0}), ["max_margin=-1", ">= 0"],
         VALUE, False),
    case("C-cb-beta-above-one", dict(loss="cb", loss_params={"beta": 2.0}), ["beta=2", "[0, 1)", "0.9999"], VALUE, False),
    case("C-weighted-ce-wrong-length", dict(loss="weighted-ce", loss_params={"weights": [1.0, 2.0]}),
         ["weights", "one entry per class (10)"], VALUE, False),
    case("C-imbalance-factor-for-split-files", dict(dataset="imagenet-lt", imbalance_factor=10.0),
         ["imbalance_factor", "leave imbalance_factor=None"], VALUE, True),
    case("C-cifar-without-data-root", dict(dataset="cifar10-lt"), ["cifar10-lt", "data_root"], VALUE, False),
    case("C-cifar-data-root-missing", lambda tmp: dict(dataset="cifar10-lt", data_root=str(tmp / "nowhere")),
         ["cifar-10-batches-py", "download"], data.DataNotFoundError, False),
    case("C-model-params-hidden-negative", dict(model_params={"hidden": -1}), ["hidden", ">= 1"], VALUE, False),
    case("C-model-params-width-zero", dict(model="small-cnn", model_params={"width": 0}), ["width", ">= 1"], VALUE, False),
    case("C-model-params-cosine-head-string", dict(model_params={"cosine_head": "yes"}), ["cosine_head", "True or False"],
         TYPE, False),
    case("C-model-params-mean-length", dict(model_params={"mean": [0.5, 0.5]}), ["mean has 2", "e.g. mean=(0.5,)"],
         VALUE, False),
    case("C-model-params-std-zero", dict(model_params={"std": [0.0]}), ["std", "> 0"], VALUE, False),
    case("C-resnet32-grey-without-mean", dict(model="resnet32", model_params={"in_channels": 1}),
         ["in_channels=1 but mean has 3", "e.g. mean=(0.5,)"], VALUE, False),
    case("C-data-seed-too-large", dict(data_seed=2**32), ["seed=4294967296", "data_seed"], VALUE, False),
    case("C-out-dir-is-a-file", lambda tmp: (tmp / "f").write_text("x") and dict(out_dir=str(tmp / "f")),
         ["is a file", "another out_dir"], VALUE, False),
    case("C-device-cuda-without-gpu", dict(device="cuda"), ["device='cuda'", "use device='auto'"], VALUE, False,
         skip="a GPU is visible: device='cuda' is valid here" if torch.cuda.is_available() else None),
    case("C-model-params-in-channels-mismatch", dict(model_params={"in_channels": 3}), ["in_channels", "channels"],
         VALUE, False),
    case("C-threads-zero", dict(threads=0), ["threads=0", ">= 1"], VALUE, True),
    case("C-seed-too-large", dict(seed=2**70), ["seed", "2**63"], VALUE, True),
    case("C-sampler-r-nan-checked-late", dict(sampler="q-sample", sampler_params={"r": NAN}), ["r=nan", "finite"],
         VALUE, True),
    case("C-sampler-param-silently-ignored", dict(sampler="class-balanced", sampler_params={"r": 0.5}),
         ["sampler_params", "'r'"], VALUE, True),
    case("C-snapshot-epoch-past-the-end", dict(snapshot_epochs=[5]), ["snapshot_epochs[0]=5", "training state"],
         VALUE, True),
    case("C-snapshot-epoch-string", dict(snapshot_epochs=["1"]), ["snapshot_epochs[0]", "integer"], TYPE, True),
    case("C-continue-from-nowhere", lambda tmp: dict(loss="ce-drw", loss_params={"drw_epoch": 1},
                                                     continue_from=str(tmp / "nowhere")),
         ["continue_from=", "not a finished run", "train it first"], VALUE, False),
    case("C-continue-from-and-weights-from", dict(loss="la-posthoc", continue_from="a", weights_from="b"),
         ["continue_from and weights_from", "leave continue_from=None"], VALUE, True),
]


def files_of(root: Path) -> dict[str, str]:
    return {k: v for k, v in tree(root).items() if v != "dir"}


@pytest.mark.parametrize("overrides, needles, expected, early", CONFIG_CASES)
def test_config_field(tmp_path, overrides, needles, expected, early):
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    overrides = {"out_dir": str(tmp_path / "out"), **overrides}
    before = tree(tmp_path)
    if early:  # refused by validation, before any folder is made
        raises_clear(lambda: train.make_config(**{**train.PRESETS["digits-lt"], **TINY, **overrides}), needles, expected)
    raises_clear(lambda: train.fit("digits-lt", **{**TINY, **overrides}), needles, expected)
    after = tree(tmp_path)
    assert files_of(tmp_path) == {k: v for k, v in before.items() if v != "dir"}, "files were left behind"
    assert all(v == "dir" for k, v in after.items() if k not in before)  # at most an empty out_dir
    assert not runs._HELD, "a run directory is still held"


# =========================================================================== (b) the command line, in child processes
# One interpreter imports ltkit once, then forks one child per command: each child is a real process whose stdout /
# stderr are files and whose exit status is its own, running exactly what ``python -m ltkit.train ARGS`` runs
# (ltkit.cli.main); only the ~5 s of importing torch are shared.  The fault tests below start full interpreters.
FORK_SERVER = r"""
import json, os, sys, traceback
import ltkit.cli, ltkit.data, ltkit.train, sklearn.datasets, torchvision  # noqa: E401
ltkit.train.method_names()  # imports ltkit.methods (diffusers, POT): once, not once per child
jobs = json.loads(sys.stdin.read())
codes = []
for job in jobs:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(job["cwd"])
            for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            sys.argv = ["python -m ltkit.train", *job["argv"]]
            try:
                ltkit.cli.main(job["argv"])
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""

CLI_COMMON = ["--epochs", "1", "--model", "mlp", "--progress", "false", "--threads", "1", "--checkpoint-every", "1",
              "--eval-every", "1"]


@dataclass
class Cli:
    """A command-line case: ``setup(folder)`` prepares the folder (the working directory) and may return extra
    arguments; ``commands`` are run in order there (each CLI_COMMON + argv); ``check(results, folder)`` for cases
    that are not a plain clear error."""

    id: str
    argv: list[str]
    needles: list[str] = field(default_factory=list)
    setup: Callable[[Path], list[str] | None] | None = None
    then: list[list[str]] = field(default_factory=list)  # further commands, run after argv
    check: Callable[[list[dict], Path], None] | None = None
    xfail: str | None = None
    real: bool = False  # run as `python -m ltkit.train ...` in a fresh interpreter (not a forked child)


def _cli_crafted_checkpoint(folder: Path) -> None:
    fit(folder / "runs", name="victim", epochs=2)
    run_dir = folder / "runs" / "victim"
    (run_dir / "result.json").unlink()  # as if killed after the last checkpoint: --resume must read it
    torch.save(dict(epoch=0, model={"w": torch.ones(1)}, extra=Payload(folder.parent / "payload-ran")),
               run_dir / "checkpoint.pt")


def _cli_config_json(text: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        (folder / "config.json").write_text(text)
        return ["--config-json", "config.json"]
    return setup


def _cli_bad_split_tree(folder: Path) -> list[str]:
    train_file, _ = write_image_tree(folder / "ImageNet_LT", [3, 2, 1])
    edit_line(train_file, 2, "train/n00000000/img_1.JPEG zero")
    return ["--preset", "imagenet-lt", "--data-root", "ImageNet_LT"]


def _cli_truncated_cifar(folder: Path) -> list[str]:
    batch = write_cifar10(folder / "data") / "data_batch_3"
    cut_file(batch, batch.stat().st_size // 3)
    return ["--dataset", "cifar10-lt", "--data-root", "data", "--imbalance-factor", "2"]


def _cli_project_folder(folder: Path) -> None:
    """What `--name ..` once deleted: a project with a .git folder and other runs."""
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "notes.txt").write_text("mine")
    fit(folder / "runs", name="other-run")


def _check_retry(results: list[dict], folder: Path) -> None:
    """A run that failed before its first checkpoint is retried by the command its message names."""
    diverged, again, retried = results
    assert diverged["rc"] == 2 and "training diverged" in diverged["stderr"]
    assert (folder / "runs" / "digits-lt-ce-s0" / "config.json").is_file()  # the failed run's record
    assert again["rc"] == 2 and "stopped before its first checkpoint" in again["stderr"]
    assert "--resume" in again["stderr"] and "start it afresh" in again["stderr"]
    assert retried["rc"] == 0, retried["stderr"]
    record = runs.load_run(folder / "runs" / "digits-lt-ce-s0")
    assert record["config"]["lr"] == 0.05 and [r["epoch"] for r in record["history"]] == [0]


def _check_debug(results: list[dict], folder: Path) -> None:
    (result,) = results
    assert result["rc"] != 0 and "Traceback (most recent call last)" in result["stderr"]
    assert "lr=nan must be a finite number" in result["stderr"]


CLI_CASES = [
    Cli("C-lr-nan", ["--lr", "nan"], ["lr=nan", "finite"]),
    Cli("C-name-dotdot-python-m-ltkit-train", ["--name", "..", "--if-exists", "overwrite"], ["run name '..'", "e.g."],
        setup=_cli_project_folder, real=True),
    Cli("C-lr-not-a-number", ["--lr", "abc"], ["--lr", "expected a number", "--help"]),
    Cli("C-unknown-option", ["--learning-rate", "0.1"], ["unrecognized arguments", "--learning-rate", "--help"]),
    Cli("C-unknown-preset", ["--preset", "cifar1000-lt"], ["unknown preset 'cifar1000-lt'", "choose one of"]),
    Cli("C-milestones-not-integers", ["--milestones", '["a"]'], ["milestones[0]", "integer"]),
    Cli("C-milestones-not-json", ["--milestones", "[160,"], ["--milestones", "expected JSON"]),
    Cli("C-few-above-many", ["--few", "200"], ["few=200 > many=100", "must not exceed"]),
    Cli("C-sampler-params-unknown", ["--sampler", "q-sample", "--sampler-params", '{"q": 1}'], ["sampler_params", "'q'"]),
    Cli("C-model-params-unknown", ["--model-params", '{"width": 3}'], ["model_params", "width", "accepted"]),
    Cli("C-name-dotdot-overwrite", ["--name", "..", "--if-exists", "overwrite"], ["run name '..'", "e.g."],
        setup=_cli_project_folder),
    Cli("C-name-dot-overwrite", ["--name", ".", "--if-exists", "overwrite"], ["run name '.'", "e.g."],
        setup=_cli_project_folder),
    Cli("C-name-absolute", [], ["run name '/", "absolute paths"],
        setup=lambda folder: ["--name", str(folder.parent / "outside-out-dir")]),
    Cli("C-config-json-malformed", [], ["--config-json config.json", "not valid JSON", "e.g."],
        setup=_cli_config_json('{"loss": "bs", "epochs": 10,}')),
    Cli("C-config-json-a-list", [], ["--config-json config.json", "JSON object"], setup=_cli_config_json('["bs"]')),
    Cli("C-config-json-nan", [], ["lr=nan", "finite"], setup=_cli_config_json('{"lr": NaN}')),
    Cli("C-config-json-unknown-field", [], ["unknown config field", "'learning_rate'"],
        setup=_cli_config_json('{"learning_rate": 0.1}')),
    Cli("C-config-json-missing", ["--config-json", "nowhere.json"], ["--config-json nowhere.json", "no such file"]),
    Cli("C-config-json-a-folder", ["--config-json", "."], ["--config-json .", "cannot be read"]),
    Cli("C-split-file-bad-line", [], ["ImageNet_LT_train.txt, line 2", "fix or delete the line"],
        setup=_cli_bad_split_tree),
    Cli("C-cifar-pickle-truncated", [], ["data_batch_3 is truncated", "re-extract"], setup=_cli_truncated_cifar),
    Cli("C-out-dir-is-a-file", ["--out-dir", "f"], ["is a file", "another out_dir"],
        setup=lambda folder: (folder / "f").write_text("x") and None),
    Cli("C-crafted-checkpoint-on-resume", ["--epochs", "2", "--name", "victim", "--resume"],
        ["refused to load", "checkpoint.pt", "could run code"], setup=_cli_crafted_checkpoint),
    Cli("C-imbalance-factor-for-split-files", ["--preset", "imagenet-lt", "--imbalance-factor", "10"],
        ["imbalance_factor", "leave imbalance_factor=None"]),
    Cli("H-retry-by-the-suggested-command", ["--lr", "50"], setup=None,
        then=[["--lr", "0.05"], ["--lr", "0.05", "--resume"]], check=_check_retry),
    Cli("H-debug-shows-the-traceback", ["--lr", "nan", "--debug"], check=_check_debug),
    Cli("C-threads-zero", ["--threads", "0"], ["threads=0", ">= 1"]),
]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, dict]:
    """Every CLI case run once (in one batch): id -> folder, files before, results, files after."""
    base = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    jobs, cases, real = [], {}, []
    for c in CLI_CASES:
        folder = base / c.id / "work"
        folder.mkdir(parents=True)
        extra = (c.setup(folder) if c.setup else None) or []
        before = tree(folder.parent.parent / c.id)
        commands = [[*CLI_COMMON, *extra, *c.argv], *[[*CLI_COMMON, *extra, *more] for more in c.then]]
        outs = []
        for i, argv in enumerate(commands):
            out = dict(cwd=str(folder), argv=argv, stdout=str(base / c.id / f"out{i}"), stderr=str(base / c.id / f"err{i}"))
            outs.append(out)
            if c.real:  # started now, running alongside the fork server
                with open(out["stdout"], "w") as stdout, open(out["stderr"], "w") as stderr:
                    real.append(subprocess.Popen([sys.executable, "-m", "ltkit.train", *argv], cwd=folder, env=env,
                                                 stdout=stdout, stderr=stderr))
            else:
                jobs.append(out)
        cases[c.id] = dict(folder=folder, before=before, jobs=outs)
    done = subprocess.run([sys.executable, "-c", FORK_SERVER], input=json.dumps(jobs), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    codes = iter(json.loads(done.stdout.splitlines()[-1]))
    real_codes = iter([proc.wait(timeout=300) for proc in real])
    for c in CLI_CASES:
        entry = cases[c.id]
        entry["results"] = [dict(rc=next(real_codes if c.real else codes), stdout=Path(j["stdout"]).read_text(),
                                 stderr=Path(j["stderr"]).read_text()) for j in entry["jobs"]]
        entry["after"] = tree(base / c.id)
    return cases


@pytest.mark.parametrize("c", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)]
                                            if c.xfail else []) for c in CLI_CASES])
def test_command_line(cli_runs, c):
    entry = cli_runs[c.id]
    if c.check:
        c.check(entry["results"], entry["folder"])
        return
    (result,) = entry["results"]
    assert result["rc"] == 2, result
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, result["stderr"]
    assert "Traceback" not in result["stderr"] and result["stdout"] == ""
    for needle in c.needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    after = {k: v for k, v in entry["after"].items() if not k.startswith(("out", "err"))}
    assert {k: v for k, v in after.items() if v != "dir"} == {k: v for k, v in entry["before"].items() if v != "dir"}, \
        "the command wrote or deleted files"
    assert all(v == "dir" for k, v in after.items() if k not in entry["before"])  # at most an empty out_dir
    assert not (entry["folder"].parent.parent / "payload-ran").exists()


# =========================================================================== (c) public functions

Y = torch.tensor
PUBLIC_CASES = [
    # profiles
    case("C-from-counts-strings", lambda: profiles.from_counts(["10", "3"]), ["[0]='10'", "is a str", "pass numbers"], TYPE),
    case("C-from-counts-negative", lambda: profiles.from_counts([10, -3]), ["[1]=-3", "non-negative whole number"], VALUE),
    case("C-from-counts-none", lambda: profiles.from_counts(None), ["class sizes", "NoneType", "e.g. [500"], TYPE),
    case("C-from-counts-scalar", lambda: profiles.from_counts(5), ["class sizes", "int 5", "one number of images"], TYPE),
    case("C-from-counts-dict", lambda: profiles.from_counts({"a": 10, "b": 3}), ["class sizes", "dict"], TYPE),
    case("C-from-counts-2d", lambda: profiles.from_counts([[10, 3], [2, 1]]), ["[0]=[10, 3]", "is a list", "flat list"], TYPE),
    case("C-from-counts-ragged", lambda: profiles.from_counts([[10, 3], [2]]), ["[0]=[10, 3]", "flat list"], TYPE),
    case("C-from-counts-bools", lambda: profiles.from_counts([True, False]), ["[0]=True", "is a bool"], TYPE),
    case("C-from-counts-fractional", lambda: profiles.from_counts([10, 3.5]), ["[1]=3.5", "whole number"], VALUE),
    case("C-from-counts-one-class", lambda: profiles.from_counts([10]), ["has 1 entry", "at least 2 classes"], VALUE),
    case("C-from-counts-empty-class", lambda: profiles.from_counts([10, 0, 3]), ["class 1 has no images", "drop the empty"],
         VALUE),
    case("C-exponential-if-nan", lambda: profiles.exponential_profile(10, 100, NAN), ["imbalance_factor=nan", "finite",
                                                                                       "n_max / n_min"], VALUE),
    case("C-exponential-if-string", lambda: profiles.exponential_profile(10, 100, "10"), ["imbalance_factor", "str"], TYPE),
    case("C-exponential-if-below-one", lambda: profiles.exponential_profile(10, 100, 0.5), ["imbalance_factor=0.5", ">= 1",
                                                                                             "balanced"], VALUE),
    case("C-exponential-if-too-large", lambda: profiles.exponential_profile(10, 100, 1000), ["class 7 has no images",
                                                                                              "lower the imbalance"], VALUE),
    case("C-exponential-n-max-nan", lambda: profiles.exponential_profile(10, NAN, 10), ["n_max=nan", "finite number"],
         VALUE),
    case("C-exponential-classes-string", lambda: profiles.exponential_profile("10", 100, 10), ["num_classes", "str"], TYPE),
    case("C-step-fraction-nan", lambda: profiles.step_profile(10, 100, 10, NAN), ["minority_fraction=nan", "finite"], VALUE),
    case("C-step-fraction-one", lambda: profiles.step_profile(10, 100, 10, 1.0), ["minority_fraction=1.0", "(0, 1)"], VALUE),
    case("C-preset-if-zero", lambda: profiles.preset_counts("cifar10-lt", 0), ["imbalance_factor=0", ">= 1"], VALUE),
    case("C-preset-fixed-if", lambda: profiles.preset_counts("imagenet-lt", 10), ["imagenet-lt", "cannot be changed"], VALUE),
    case("C-preset-unknown", lambda: profiles.preset_counts("cifar1000-lt"), ["'cifar1000-lt'", "choose one of"], VALUE),
    case("C-profile-kind-unknown", lambda: profiles.make_profile("zipf", 10, 100, 10), ["'zipf'", "exponential, step"],
         VALUE),
    case("C-head-share-fraction-nan", lambda: profiles.head_share([10, 3], fraction=NAN), ["fraction=nan", "e.g. 0.2"],
         VALUE),
    case("C-tail-share-fraction-negative", lambda: profiles.tail_share([10, 3], fraction=-1), ["fraction=-1", "(0, 1]"],
         VALUE),
    case("C-group-sizes-many-nan", lambda: profiles.group_sizes([10, 3], many=NAN), ["many=nan", "the papers use 100"],
         VALUE),
    case("C-group-sizes-few-above-many", lambda: profiles.group_sizes([10, 3], many=10, few=50), ["few threshold (50)",
                                                                                                 "many=100, few=20"], VALUE),
    case("C-anchored-negative-size", lambda: profiles.anchored_profile(3, [(0, 100), (2, -1)]), ["rank 2", "> 0"], VALUE),
    # metrics
    case("C-evaluate-not-square", lambda: metrics.evaluate(torch.zeros(3, 4), [10, 5, 1]), ["square", "shape (3, 4)",
                                                                                             "confusion_matrix"], ValueError),
    case("C-evaluate-counts-length", lambda: metrics.evaluate(torch.eye(3), [10, 5]), ["train_counts has 2 entries",
                                                                                       "3 classes", "every class"],
         ValueError),
    case("C-evaluate-counts-strings", lambda: metrics.evaluate(torch.eye(3), ["10", "5", "1"]), ["train_counts[0]='10'",
                                                                                                  "pass numbers"], TYPE),
    case("C-evaluate-no-test-images", lambda: metrics.evaluate(torch.zeros(3, 3), [10, 5, 1]), ["all zeros",
                                                                                                 "no test images"], ValueError),
    case("C-evaluate-negative", lambda: metrics.evaluate(-torch.eye(3), [10, 5, 1]), ["non-negative counts"], ValueError),
    case("C-confusion-length-mismatch", lambda: metrics.confusion_matrix(Y([0, 1]), Y([0, 1, 2]), 3),
         ["targets has 2 labels but predictions has 3", "one prediction per test image"], ValueError),
    case("C-confusion-logits", lambda: metrics.confusion_matrix(Y([0, 1]), torch.randn(2, 3), 3), ["look like logits",
                                                                                                     "argmax"], ValueError),
    case("C-confusion-label-range", lambda: metrics.confusion_matrix(Y([0, 5]), Y([0, 1]), 3), ["label 5", "[0, 3)"],
         ValueError),
    case("C-group-accuracy-length", lambda: metrics.group_accuracy([0.5, 0.4], [10, 5, 1]), ["train_counts has 3",
                                                                                              "per_class has 2"], ValueError),
    case("C-summarize-seeds-empty", lambda: metrics.summarize_seeds([]), ["results is empty", "at least one"], ValueError),
    # sampling
    case("C-class-probabilities-r-nan", lambda: sampling.class_probabilities([10, 3], NAN), ["r=nan", "finite", "r=1"],
         VALUE),
    case("C-class-probabilities-r-string", lambda: sampling.class_probabilities([10, 3], "1"), ["r must be a real number",
                                                                                                "str"], TYPE),
    case("C-class-probabilities-negative", lambda: sampling.class_probabilities([10, -3], 1.0), ["class_counts[1]",
                                                                                                  "non-negative"], VALUE),
    case("C-class-probabilities-strings", lambda: sampling.class_probabilities(["10", "3"], 1.0), ["class_counts",
                                                                                                    "e.g. [500"], TYPE),
    case("C-sampler-kind-unknown", lambda: sampling.make_sampler([0, 1], [1, 1], "balanced"), ["sampler kind 'balanced'",
                                                                                               "class-balanced"], VALUE),
    case("C-sampler-counts-mismatch", lambda: sampling.make_sampler([0, 1, 1], [1, 1], "class-balanced"),
         ["class_counts does not match the labels", "class_counts=None"], VALUE),
    case("C-sampler-label-range", lambda: sampling.make_sampler([0, 5], [1, 1], "class-balanced"), ["label 5",
                                                                                                    "0-based"], VALUE),
    case("C-effective-number-beta", lambda: sampling.effective_number([10, 3], 1.5), ["beta=1.5", "[0, 1)"], VALUE),
    case("C-progressive-epoch", lambda: sampling.progressive_probabilities([10, 3], 5, 3), ["epoch=5", "[0, 3]"], VALUE),
    case("C-sampler-unknown-keyword", lambda: sampling.make_sampler([0, 1], [1, 1], "q-class", q=1), ["'q'", "accepts: r"],
         VALUE),
    # losses
    case("C-loss-unknown", lambda: losses.make_loss("xent", [10, 3]), ["unknown loss 'xent'", "choose one of"], VALUE),
    case("C-loss-unknown-parameter", lambda: losses.make_loss("ce", [10, 3], gamma=2), ["gamma", "accepts: none"], VALUE),
    case("C-loss-counts-strings", lambda: losses.make_loss("bs", ["10", "3"]), ["class_counts", "e.g. [500"], TYPE),
    case("C-loss-counts-zero", lambda: losses.make_loss("bs", [10, 0]), ["class_counts[1] is 0", "drop empty classes"],
         VALUE),
    case("C-loss-counts-nan", lambda: losses.make_loss("ldam", [10, NAN]), ["class_counts[1]=nan", "finite"], VALUE),
    case("C-loss-logits-columns", lambda: losses.make_loss("ce", [10, 3])(torch.randn(4, 3), Y([0, 1, 0, 1])),
         ["class_counts has 2 entries but logits have 3 columns"], VALUE),
    case("C-loss-float-targets", lambda: losses.make_loss("ce", [10, 3])(torch.randn(2, 2), Y([0.0, 1.0])),
         ["targets must be integer class indices", "lam * loss"], VALUE),
    case("C-drw-beta-one", lambda: losses.drw_weights([10, 3], beta=1.0), ["beta=1.0", "[0, 1)"], VALUE),
    case("C-ldam-margins-nan", lambda: losses.ldam_margins([10, 3], max_margin=NAN), ["max_margin=nan", "finite"], VALUE),
    # models
    case("C-model-unknown", lambda: models.make_model("vgg", 10), ["'vgg'", "valid names"], VALUE),
    case("C-model-one-class", lambda: models.make_model("mlp", 1), ["num_classes", ">= 2"], VALUE),
    case("C-model-hidden-negative", lambda: models.make_model("mlp", 10, hidden=-1), ["hidden", ">= 1"], VALUE),
    case("C-model-width-string", lambda: models.make_model("small-cnn", 10, width="32"), ["width", "integer"], TYPE),
    case("C-model-unknown-keyword", lambda: models.make_model("mlp", 10, widht=3), ["widht", "valid: cosine_head"], VALUE),
    case("C-model-wrong-channels", lambda: models.make_model("mlp", 10, in_channels=3)(torch.rand(2, 1, 8, 8)),
         ["(N, 3, H, W)", "in_channels"], VALUE),
    # data and runs
    case("C-digits-if-nan", lambda: data.load_digits_lt(imbalance_factor=NAN), ["imbalance_factor=nan", "finite"], VALUE),
    case("C-digits-n-max-too-large", lambda: data.load_digits_lt(n_max=500), ["class 0 has only", "lower n_max"], VALUE),
    case("C-digits-seed-negative", lambda: data.load_digits_lt(seed=-1), ["seed=-1", "data_seed"], VALUE),
    case("C-digits-test-per-class", lambda: data.load_digits_lt(test_per_class=500), ["test_per_class=500", "[1, "],
         VALUE),
    case("C-class-counts-label-range", lambda: data.count_labels([0, 5], 2), ["label 5", "[0, 2)", "relabel"], VALUE),
    case("C-load-dataset-unknown", lambda: data.load_dataset("mnist-lt"), ["'mnist-lt'", "digits-lt"], VALUE),
    case("C-load-dataset-option", lambda: data.load_dataset("imagenet-lt", root=".", imbalance_factor=10),
         ["takes no imbalance_factor", "valid: check_files"], VALUE),
    case("C-run-path-escapes", lambda: runs.run_path("runs", "../x"), ["'../x'", "e.g."], VALUE),
    case("C-safe-name-of-symbols", lambda: runs.safe_name("+ ++"), ["no letters or digits", "pass a name"], VALUE),
    case("C-load-run-missing", lambda: runs.load_run("/nonexistent/run"), ["/nonexistent/run/config.json",
                                                                            "run directory"], runs.MissingRecordError),
    case("C-explore-wrong-source", lambda: widgets.explore(42), ["explore()", "runs folder", "int"], TypeError),
]


@pytest.mark.parametrize("call, needles, expected", PUBLIC_CASES)
def test_public_function(call, needles, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy warning on the way to the error
        raises_clear(call, needles, expected)


# =========================================================================== (d) data files
def _batch(name: str) -> Callable[[Path], Path]:
    return lambda folder: folder / name


def _relabel(name: str, index: int, label: Any) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        def change(entry):
            entry["labels"][index] = label
        rewrite_pickle(folder / name, change)
    return damage


def _set(name: str, key: str, value: Callable[[dict], Any] | None) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        def change(entry):
            if value is None:
                del entry[key]
            else:
                entry[key] = value(entry)
        rewrite_pickle(folder / name, change)
    return damage


def _write(name: str, content: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name
        path.write_bytes(content(path.read_bytes()) if callable(content) else content)
    return damage


def _crafted(folder: Path) -> None:
    rewrite_pickle(folder / "data_batch_1", lambda e: e.update(extra=Payload(folder.parent.parent / "payload-ran")))


REEXTRACT = "re-extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_CASES = [
    case("C-cifar-truncated", _write("data_batch_4", lambda b: b[: len(b) // 2]),
         ["data_batch_4 is truncated or not a CIFAR pickle", REEXTRACT], data.DataError, {}),
    case("C-cifar-empty-file", _write("test_batch", b""), ["test_batch is truncated", REEXTRACT], data.DataError, {}),
    case("C-cifar-random-bytes", _write("data_batch_2", bytes(range(256)) * 8), ["data_batch_2 is truncated or not a CIFAR",
                                                                                 REEXTRACT], data.DataError, {}),
    case("C-cifar-rows-6144-bytes", _set("data_batch_2", "data", lambda e: np.concatenate([e["data"], e["data"]], axis=1)),
         ["data_batch_2: 'data'", "(40, 6144)", "rows of 3072 bytes", REEXTRACT], data.DataError, {}),
    case("C-cifar-float-rows", _set("data_batch_3", "data", lambda e: e["data"].astype(np.float32)),
         ["data_batch_3: 'data' is ndarray float32", "expected uint8"], data.DataError, {}),
    case("C-cifar-train-label-out-of-range", _relabel("data_batch_5", 3, 10),
         ["data_batch_5: label 10 at index 3", "outside [0, 10)", REEXTRACT], data.DataError, {}),
    case("C-cifar-test-label-out-of-range", _relabel("test_batch", 3, -1),
         ["test_batch: label -1 at index 3", "outside [0, 10)"], data.DataError, {}),
    case("C-cifar-label-count-mismatch", _set("data_batch_1", "labels", lambda e: e["labels"][:-1]),
         ["data_batch_1: 40 images but 39 labels", REEXTRACT], data.DataError, {}),
    case("C-cifar-string-labels", _set("data_batch_1", "labels", lambda e: [str(v) for v in e["labels"]]),
         ["data_batch_1: 'labels' holds", "expected integer class indices"], data.DataError, {}),
    case("C-cifar-no-data-entry", _set("data_batch_2", "data", None),
         ["data_batch_2 has no 'data' and 'labels' entries", "not a CIFAR-10 batch"], data.DataError, {}),
    case("C-cifar-pickle-of-a-list", _write("data_batch_1", pickle.dumps([1, 2, 3], protocol=2)),
         ["data_batch_1 holds a list", "not a CIFAR batch"], data.DataError, {}),
    case("C-cifar-meta-class-names", _write("batches.meta", pickle.dumps({"label_names": ["a", "b"]}, protocol=2)),
         ["batches.meta: 'label_names' should list 10 class names, got 2", REEXTRACT], data.DataError, {}),
    case("C-cifar-missing-batch", lambda folder: (folder / "data_batch_3").unlink(),
         ["incomplete or corrupted", "data_batch_3 missing", REEXTRACT], data.DataNotFoundError, {}),
    case("C-cifar-crafted-pickle", _crafted, ["data_batch_1 is truncated or not a CIFAR pickle", "refused global posix.mkdir",
                                              "could run code"], data.DataError, {}),
    case("C-cifar-md5-check", lambda folder: None, ["data_batch_1 fails torchvision's md5 check",
                                                    "turn verify_checksums off"], data.DataError, dict(verify_checksums=True)),
]


@pytest.mark.parametrize("damage, needles, expected, extra", CIFAR_CASES)
def test_cifar_file(tmp_path, damage, needles, expected, extra):
    """A damaged CIFAR folder through the engine: one line naming the file (and index) and the fix; no run left."""
    folder = write_cifar10(tmp_path / "data")
    damage(folder)
    before = tree(tmp_path)
    message = raises_clear(lambda: fit(tmp_path / "out", dataset="cifar10-lt", data_root=str(tmp_path / "data"),
                                       imbalance_factor=2.0, **extra), needles, expected)
    assert str(folder) in message  # the full path of the file, not only its name
    assert files_of(tmp_path) == {k: v for k, v in before.items() if v != "dir"}
    assert not (tmp_path / "payload-ran").exists()


def _split_edit(which: str, lineno: int, text: str | None) -> Callable[[Path], None]:
    return lambda root: edit_line(root / f"ImageNet_LT_{which}.txt", lineno, text)


SPLIT_CASES = [
    case("C-split-label-not-a-number", _split_edit("train", 2, "train/n00000000/img_1.JPEG zero"),
         ["ImageNet_LT_train.txt, line 2", "expected 'relative/path label'", "fix or delete the line"], data.DataError, {}),
    case("C-split-negative-label", _split_edit("train", 3, "train/n00000000/img_2.JPEG -1"),
         ["ImageNet_LT_train.txt, line 3", "non-negative integer label"], data.DataError, {}),
    case("C-split-line-without-label", _split_edit("test", 1, "test/n00000000/img_0.JPEG"),
         ["ImageNet_LT_test.txt, line 1", "expected 'relative/path label'"], data.DataError, {}),
    case("C-split-train-label-out-of-range", _split_edit("train", 4, "train/n00000001/img_0.JPEG 3"),
         ["ImageNet_LT_train.txt, line 4: label 3 is outside [0, 3)", "fix the split file or num_classes"],
         data.DataError, {}),
    case("C-split-test-label-out-of-range", _split_edit("test", 2, "test/n00000001/img_0.JPEG 7"),
         ["ImageNet_LT_test.txt, line 2: label 7 is outside [0, 3)"], data.DataError, {}),
    case("C-split-missing-image", lambda root: (root / "train/n00000001/img_1.JPEG").unlink(),
         ["1 of 6 images listed in", "ImageNet_LT_train.txt", "line 5: train/n00000001/img_1.JPEG", "check root="],
         data.DataNotFoundError, {}),
    case("C-split-listed-folder", _split_edit("train", 1, "train/n00000000 0"),
         ["1 of 6 images listed in", "line 1: train/n00000000", "check root="], data.DataNotFoundError, {}),
    case("C-split-empty-file", _write("ImageNet_LT_test.txt", b"\n\n"),
         ["ImageNet_LT_test.txt holds no 'relative/path label' lines", "pass the split file"], data.DataError, {}),
    case("C-split-not-utf8", _write("ImageNet_LT_train.txt", b"a.jpg 0\n\xff\xfe\x00 1\n"),
         ["ImageNet_LT_train.txt is not a UTF-8 text file", "pass the split file"], data.DataError, {}),
    case("C-split-file-missing", lambda root: (root / "ImageNet_LT_test.txt").unlink(),
         ["split file", "ImageNet_LT_test.txt does not exist", "ImageNet-LT"], data.DataNotFoundError, {}),
    case("C-split-root-missing", lambda root: shutil.rmtree(root), ["image root", "does not exist", "pass root="],
         data.DataNotFoundError, {}),
    case("C-split-class-without-images", lambda root: None, ["class 3 has no training images", "num_classes"],
         data.DataError, dict(num_classes=4)),
    case("C-split-num-classes-zero", lambda root: None, ["num_classes=0", ">= 1"], VALUE, dict(num_classes=0)),
]


@pytest.mark.parametrize("damage, needles, expected, extra", SPLIT_CASES)
def test_split_file(tmp_path, damage, needles, expected, extra):
    root = tmp_path / "ImageNet_LT"
    write_image_tree(root, [3, 2, 1], test_per_class=1)
    damage(root)
    before = tree(tmp_path)
    raises_clear(lambda: data.load_dataset("imagenet-lt", root=root, **{"num_classes": 3, **extra}), needles, expected)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("content, needles", [
    pytest.param(lambda b: b[:200], ["OSError", "truncated"], id="C-jpeg-truncated-in-a-worker"),
    pytest.param(lambda b: b"not an image at all", ["UnidentifiedImageError"], id="C-jpeg-garbage-in-a-worker"),
])
def test_unreadable_image_in_a_dataloader_worker(tmp_path, content, needles):
    from torchvision.transforms.functional import pil_to_tensor

    root = tmp_path / "ImageNet_LT"
    write_image_tree(root, [3, 2, 1])
    broken = root / "train/n00000001/img_1.JPEG"
    broken.write_bytes(content(broken.read_bytes()))
    d = data.load_dataset("imagenet-lt", root=root, num_classes=3)
    d.train.transform = pil_to_tensor
    loader = torch.utils.data.DataLoader(d.train, batch_size=2, num_workers=1)
    with pytest.raises(data.ImageReadError) as err:
        list(loader)
    message = assert_clear(err.value, [str(broken), "line 5 of", "ImageNet_LT_train.txt", "cannot be read as an image",
                                       "replace the file", "raised in a DataLoader worker", *needles])
    assert message.startswith(str(broken))


# =========================================================================== (e) run folders


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished 2-epoch run; tests copy it."""
    out = tmp_path_factory.mktemp("finished")
    return Path(fit(out, name="run", epochs=2)["dir"])


def copy_run(source: Path, out: Path, name: str = "run") -> Path:
    target = out / name
    shutil.copytree(source, target)
    return target


def _unfinish(run_dir: Path) -> None:
    (run_dir / "result.json").unlink()


def _and(*steps: Callable[[Path], Any]) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        for step in steps:
            step(run_dir)
    return damage


def _history_rows(n: int) -> Callable[[Path], None]:
    return lambda run_dir: (run_dir / "history.jsonl").write_text(
        "".join(line + "\n" for line in (run_dir / "history.jsonl").read_text().splitlines()[:n]))


def _load_trained_crafted(run_dir: Path) -> None:
    torch.save(dict(epoch=1, model={}, loss={}, method={}, extra=Payload(run_dir.parent / "payload-ran")),
               run_dir / "checkpoint.pt")


RESUME = dict(epochs=2, if_exists="resume")
# (damage of the finished run's copy, what is tried: "resume" | "error" | "load_run" | "load_trained" | overrides,
#  needles, exception type)
RUN_CASES = [
    case("C-resume-with-another-config", _unfinish, dict(RESUME, lr=0.2),
         ["cannot resume", "differs in ['lr']", "stored [0.05], now [0.2]", "--if-exists overwrite"], VALUE),
    case("C-again-a-finished-run", lambda d: None, dict(epochs=2),
         ["already exists and is finished", "--resume", "to get its record", "--name"], runs.RunExistsError),
    case("C-again-a-checkpointed-run", _unfinish, dict(epochs=2),
         ["already exists and has a checkpoint", "continue it from there"], runs.RunExistsError),
    case("C-resume-truncated-checkpoint", _and(_unfinish, lambda d: cut_file(d / "checkpoint.pt", 300)), RESUME,
         ["checkpoint.pt is corrupt or truncated", "if_exists='overwrite'"], runs.CheckpointError),
    case("C-resume-checkpoint-of-a-list", _and(_unfinish, lambda d: runs.save_checkpoint(d / "checkpoint.pt", [1, 2])),
         RESUME, ["checkpoint.pt holds a list", "not an ltkit checkpoint"], runs.CheckpointError),
    case("C-resume-crafted-checkpoint", _and(_unfinish, lambda d: torch.save(
        dict(epoch=0, model={}, x=Payload(d.parent / "payload-ran")), d / "checkpoint.pt")), RESUME,
         ["refused to load", "checkpoint.pt", "posix.mkdir", "could run code"], runs.UnsafeFileError),
    case("C-resume-config-json-wrong-shape", _and(_unfinish, lambda d: (d / "config.json").write_text("[1, 2]")), RESUME,
         ["config.json is not an ltkit run config", "--if-exists overwrite"], runs.RecordError),
    case("C-resume-config-json-inner-shape", _and(_unfinish, lambda d: (d / "config.json").write_text('{"config": []}')),
         RESUME, ["config.json is not an ltkit run config", "'config' object"], runs.RecordError),
    case("C-resume-config-json-truncated", _and(_unfinish, lambda d: cut_file(d / "config.json", 40)), RESUME,
         ["config.json is not valid JSON", "truncated or damaged"], runs.RecordError),
    case("C-resume-config-json-missing", _and(_unfinish, lambda d: (d / "config.json").unlink()), RESUME,
         ["has a checkpoint or result but no config.json", "--if-exists overwrite"], runs.RecordError),
    case("C-resume-history-lacks-checkpointed-rows", _and(_unfinish, _history_rows(1)), RESUME,
         ["history.jsonl lacks the rows of epoch(s) 1", "checkpoint (epoch 1)", "restore it"], runs.RecordError),
    case("C-load-run-history-lacks-rows", _history_rows(1), "load_run",
         ["history.jsonl lacks the rows of epoch(s) 1", "finished run", "retrain"], runs.RecordError),
    case("C-load-run-history-damaged-line", lambda d: edit_line(d / "history.jsonl", 1, '{"epoch": 0, "lr": '), "load_run",
         ["history.jsonl, line 1", "delete the line"], runs.RecordError),
    case("C-load-run-config-wrong-shape", lambda d: (d / "config.json").write_text('"a string"'), "load_run",
         ["config.json is not an ltkit run config", "delete the folder"], runs.RecordError),
    case("C-load-run-result-wrong-shape", lambda d: (d / "result.json").write_text("[0.5]"), "load_run",
         ["result.json is not a JSON object", "retrain"], runs.RecordError),
    case("C-load-run-result-null", lambda d: (d / "result.json").write_text("null"), "load_run",
         ["result.json is not a JSON object", "retrain"], runs.RecordError),
    case("C-load-trained-crafted-checkpoint", _load_trained_crafted, "load_trained",
         ["refused to load", "checkpoint.pt", "could run code"], runs.UnsafeFileError),
    case("C-resume-checkpoint-of-another-model", _and(_unfinish, lambda d: runs.save_checkpoint(
        d / "checkpoint.pt", dict(epoch=0, model={"w": torch.ones(1)}, optimizer={}, loss={}, method={}))), RESUME,
         ["checkpoint.pt does not fit this run", "if_exists='overwrite'"], runs.CheckpointError),
]


@pytest.mark.parametrize("damage, action, needles, expected", RUN_CASES)
def test_run_folder(tmp_path, finished, damage, action, needles, expected):
    out = tmp_path / "out"
    run_dir = copy_run(finished, out)
    damage(run_dir)
    before = tree(tmp_path)
    if action == "load_run":
        call = lambda: runs.load_run(run_dir)  # noqa: E731
    elif action == "load_trained":
        call = lambda: train.load_trained(run_dir)  # noqa: E731
    else:
        call = lambda: fit(out, name="run", **action)  # noqa: E731
    raises_clear(call, needles, expected)
    assert tree(tmp_path) == before, "the folder changed"
    assert not (tmp_path / "out" / "payload-ran").exists()
    assert not runs._HELD


@pytest.mark.parametrize("make", [
    pytest.param(lambda out: (out / "run").mkdir(parents=True) or (out / "run" / "notes.txt").write_text("mine"),
                 id="C-overwrite-a-folder-that-is-no-run"),
    pytest.param(lambda out: out.mkdir() or (out / "run").write_text("a file"), id="C-run-name-is-a-file"),
    pytest.param(lambda out: (out / "run" / "sub").mkdir(parents=True) or runs.write_json(out / "run" / "config.json", {}),
                 id="C-overwrite-a-run-holding-a-folder"),
    # json / pt files that are not the kit's: judged by name, not by extension
    pytest.param(lambda out: (out / "run").mkdir(parents=True) or [runs.write_json(out / "run" / n, {"foo": 1}) for n in
                                                                   ("config.json", "settings.json")]
                 and torch.save({"w": torch.ones(1)}, out / "run" / "weights.pt"),
                 id="C-overwrite-a-folder-of-look-alike-files"),
])
def test_overwrite_refuses_what_is_not_a_run(tmp_path, make):
    out = tmp_path / "out"
    make(out)
    before = tree(tmp_path)
    raises_clear(lambda: fit(out, name="run", if_exists="overwrite"), ["run", "choose another run name (--name)"],
                 runs.RunExistsError)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("part", ["train", "test"])
def test_C_labels_out_of_range_in_data_passed_in_memory(tmp_path, part):
    """``fit(data=TensorData)``: a label outside the classes, in the training *or* the test set, is refused before
    the first epoch and nothing is left behind (a test label used to fail only at the first evaluation)."""
    digits = data.load_digits_lt()
    labels = getattr(digits, f"y_{part}").clone()
    labels[3] = 99
    bad = dataclasses.replace(digits, **{f"y_{part}": labels})
    before = tree(tmp_path)
    raises_clear(lambda: train.fit("digits-lt", data=bad, out_dir=str(tmp_path / "out"), **TINY),
                 ["label 99 (index 3, 1 such labels) is outside [0, 10)", "relabel the"], VALUE)
    assert files_of(tmp_path) == {k: v for k, v in before.items() if v != "dir"}
    assert not runs._HELD


def test_C_run_held_by_this_process_is_refused(tmp_path):
    out = tmp_path / "out"
    assert runs.prepare_run_dir(out / "run", {}, "error") == "new"
    try:
        raises_clear(lambda: fit(out, name="run", if_exists="overwrite"), ["already held by this process",
                                                                           f"pid {os.getpid()}", "wait for it"],
                     runs.RunInUseError)
    finally:
        runs.release_run_dir(out / "run")
    assert not (out / "run").exists()


def test_H_resume_of_a_finished_run_returns_its_record(tmp_path, finished):
    run_dir = copy_run(finished, tmp_path)
    before = tree(tmp_path)
    record = fit(tmp_path, name="run", **RESUME)
    assert record["result"] == runs.load_run(finished)["result"]  # not retrained: even the wall time is the stored one
    assert tree(tmp_path) == before and Path(record["dir"]) == run_dir


def test_H_killed_between_last_checkpoint_and_result(tmp_path, finished):
    """A line cut mid-write after the last checkpoint, and no result.json: resume evaluates, the history stays whole."""
    run_dir = copy_run(finished, tmp_path)
    _unfinish(run_dir)
    with open(run_dir / "history.jsonl", "a") as f:
        f.write('{"epoch": 2, "lr": 0.0')  # a row being written when the process died
    record = fit(tmp_path, name="run", **RESUME)
    assert [row["epoch"] for row in record["history"]] == [0, 1]
    assert (run_dir / "history.jsonl").read_text().endswith("}\n")
    expected = runs.load_run(finished)
    assert result_without_times(record["result"]) == result_without_times(expected["result"])
    assert history_without_times(record["history"]) == history_without_times(expected["history"])


def test_H_divergence_keeps_the_last_good_checkpoint_and_its_advice_works(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(train.DivergedError) as err:
        fit(out, name="run", epochs=3, lr=2.0, warmup_epochs=2)  # epoch 0 at lr 1 is fine, epoch 1 at lr 2 explodes
    message = assert_clear(err.value, ["epoch 1", "training diverged", "last good checkpoint is kept", "lower lr",
                                       "if_exists='overwrite'"])
    assert isinstance(err.value, checks.LtkitError) and "now 2" in message
    assert runs.load_checkpoint(out / "run" / "checkpoint.pt")["epoch"] == 0
    assert [row["epoch"] for row in runs.read_history(out / "run")] == [0]
    record = fit(out, name="run", epochs=3, lr=0.05, warmup_epochs=2, if_exists="overwrite")  # what it says to do
    assert [row["epoch"] for row in record["history"]] == [0, 1, 2] and record["result"] is not None


def test_H_damaged_runs_are_skipped_by_load_runs_and_noted_by_the_explorer(tmp_path, finished):
    good = copy_run(finished, tmp_path, "good")
    shape = copy_run(finished, tmp_path, "wrong-shape-config")
    (shape / "config.json").write_text('{"config": ["not", "a", "dict"]}')
    cut = copy_run(finished, tmp_path, "cut-result")
    cut_file(cut / "result.json", 20)
    typed = copy_run(finished, tmp_path, "label-of-a-number")  # valid JSON of the right shape, a field of the wrong type
    meta = json.loads((typed / "config.json").read_text())
    (typed / "config.json").write_text(json.dumps({**meta, "config": {**meta["config"], "label": 3}}))
    with pytest.warns(UserWarning) as caught:
        records = runs.load_runs(tmp_path)
    assert [r["name"] for r in records] == [good.name, typed.name]  # a record; the explorer judges its fields
    skipped = [str(w.message) for w in caught if "damaged run" in str(w.message)]
    assert len(skipped) == 2 and all("\n" not in m for m in skipped)
    assert any(str(shape) in m and "config.json is not an ltkit run config" in m for m in skipped)
    assert any(str(cut) in m and "result.json is not valid JSON" in m for m in skipped)
    with pytest.raises(runs.RecordError):
        runs.load_runs(tmp_path, strict=True)
    explorer = widgets.explore(tmp_path, dpi=20).explorer  # the explorer does not crash on them: it notes them
    notes = explorer.message.value
    assert "wrong-shape-config" in notes and "cut-result" in notes and "could not be read" in notes
    assert "label-of-a-number" in notes and "config field &#x27;label&#x27; is 3, not a str" in notes
    assert list(explorer.groups) and "good" not in notes


# =========================================================================== (f) faults
# A real interpreter running the command line, with one hook: it stops in the middle of an epoch (after
# ``step`` optimiser steps of epoch ``epoch``), says so through a file, and waits to be released (or killed).
VICTIM = r"""
import os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started from a shell that ignores SIGINT (&)
import ltkit.train as engine
epoch_at, step_at = map(int, os.environ["LTKIT_PAUSE"].split(","))
ready, release = Path(os.environ["LTKIT_READY"]), Path(os.environ["LTKIT_RELEASE"])
batches = engine.tensor_batches

def paused(ctx, epoch):
    for step, batch in enumerate(batches(ctx, epoch)):
        if (epoch, step) == (epoch_at, step_at):
            ready.write_text(str(os.getpid()))
            while not release.exists():
                time.sleep(0.01)
        yield batch

engine.tensor_batches = paused
engine.method_names()
go = os.environ.get("LTKIT_GO")
while go and not Path(go).exists():
    time.sleep(0.005)
from ltkit.cli import main
main(sys.argv[1:])
"""
FAULT_ARGS = [*CLI_COMMON, "--epochs", "3"]


def victim(tmp_path: Path, tag: str, *args: str, go: Path | None = None) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / f"ready-{tag}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore::DeprecationWarning", "LTKIT_PAUSE": "1,2",
           "LTKIT_READY": str(ready), "LTKIT_RELEASE": str(tmp_path / "release"), **({"LTKIT_GO": str(go)} if go else {})}
    proc = subprocess.Popen([sys.executable, "-c", VICTIM, *FAULT_ARGS, "--out-dir", str(tmp_path / "runs"), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, ready


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_H_two_processes_start_one_run_name_at_once(tmp_path):
    """One wins, the other gets one line naming the holder's pid and host; the record is the winner's alone."""
    go = tmp_path / "go"
    procs = {lr: victim(tmp_path, lr, "--name", "same", "--lr", lr, go=go) for lr in ("0.05", "0.2")}
    go.touch()
    wait_for(lambda: sum(p.poll() is not None for p, _ in procs.values()) == 1
             and sum(ready.exists() for _, ready in procs.values()) == 1, "one winner paused and one loser gone")
    (win_lr, (winner, _)), = [(lr, pr) for lr, pr in procs.items() if pr[1].exists()]
    (loser, _), = [pr for lr, pr in procs.items() if lr != win_lr]
    loser_out, loser_err = loser.communicate(timeout=60)
    (tmp_path / "release").touch()
    winner_out, winner_err = winner.communicate(timeout=180)
    assert winner.returncode == 0, winner_err
    assert loser.returncode == 2 and loser_out == ""
    lines = loser_err.splitlines()
    assert len(lines) == 1 and "Traceback" not in loser_err, loser_err
    assert f"is in use by process {winner.pid} on host {socket.gethostname()}" in lines[0]
    assert "choose another run name (--name)" in lines[0]
    run_dir = tmp_path / "runs" / "same"
    record = runs.load_run(run_dir)
    assert record["config"]["lr"] == float(win_lr) == model_state(run_dir)["config"]["lr"]
    assert [row["epoch"] for row in record["history"]] == [0, 1, 2]  # one row per epoch: no interleaving
    assert not (run_dir / runs.LOCK_NAME).exists()
    reference = fit(tmp_path / "reference", name="same", epochs=3, lr=float(win_lr))
    assert_same_run(Path(reference["dir"]), run_dir)


def test_H_sigkill_and_sigint_mid_epoch_then_resume_equal_an_uninterrupted_run(tmp_path):
    """SIGKILL / SIGINT in the middle of epoch 1 of 3; ``--resume`` ends bit-exactly where an uninterrupted run ends
    (checkpoint tensors, optimiser state, result.json and history minus times), also after a history line cut by
    the kill."""
    killed, killed_ready = victim(tmp_path, "kill", "--name", "killed")
    interrupted, interrupted_ready = victim(tmp_path, "int", "--name", "interrupted")
    reference = Path(fit(tmp_path / "reference", name="whole", epochs=3)["dir"])  # meanwhile, in this process
    wait_for(lambda: killed_ready.exists() and interrupted_ready.exists(), "both runs to pause mid-epoch")
    killed.send_signal(signal.SIGKILL)
    interrupted.send_signal(signal.SIGINT)
    _, killed_err = killed.communicate(timeout=60)
    interrupted_out, interrupted_err = interrupted.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed_err
    assert interrupted.returncode == 130, interrupted_err
    lines = interrupted_err.splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0] and interrupted_out == ""
    out = tmp_path / "runs"
    for name in ("killed", "interrupted"):
        assert [r["epoch"] for r in runs.read_history(out / name)] == [0] and not (out / name / "result.json").exists()
        assert model_state(out / name)["epoch"] == 0
    assert (out / "killed" / runs.LOCK_NAME).exists() and not (out / "interrupted" / runs.LOCK_NAME).exists()
    shutil.copytree(out / "killed", out / "cut")  # as if the kill had come while epoch 1's row was being written
    with open(out / "cut" / "history.jsonl", "a") as f:
        f.write('{"epoch": 1, "lr": 0.05, "train_lo')
    for name in ("killed", "interrupted", "cut"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli.main([*FAULT_ARGS, "--out-dir", str(out), "--name", name, "--resume"])
        stale = [str(w.message) for w in caught if "stale lock" in str(w.message)]
        assert bool(stale) == (name != "interrupted"), (name, stale)  # a killed run's lock is taken over, and said so
        assert_same_run(reference, out / name)
        assert not (out / name / runs.LOCK_NAME).exists()


def test_C_damaged_split_file_tree_through_the_engine(tmp_path):
    """A truncated JPEG found by a DataLoader worker in epoch 0: one line naming file and line; the run is left as
    'stopped before its first checkpoint' and, once the file is replaced, the command the next message names works."""
    root = tmp_path / "ImageNet_LT"
    write_image_tree(root, [6, 3, 2], test_per_class=2)
    broken = root / "train/n00000001/img_2.JPEG"
    good = broken.read_bytes()
    broken.write_bytes(good[:150])
    config = dict(data_root=str(root), model="small-cnn", model_params={"in_channels": 3}, image_size=16, batch_size=4,
                  num_workers=1, out_dir=str(tmp_path / "runs"), name="tree", epochs=1, progress=False, threads=1)

    def run(**extra):
        return train.fit("imagenet-lt", data=data.load_dataset("imagenet-lt", root=root, num_classes=3),
                         **{**config, **extra})

    with pytest.raises(data.ImageReadError) as err:
        run()
    assert_clear(err.value, [str(broken), "line 9 of", "ImageNet_LT_train.txt", "cannot be read as an image",
                             "replace the file", "DataLoader worker"])
    run_dir = tmp_path / "runs" / "tree"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"] and not runs._HELD
    broken.write_bytes(good)
    with pytest.raises(runs.RunExistsError) as err:
        run()
    message = assert_clear(err.value, ["stopped before its first checkpoint", "if_exists='resume'", "start it afresh"])
    record = run(if_exists=message.split("pass if_exists='")[1].split("'")[0])  # what the message says to do
    assert record["result"]["class_counts"] == [6, 3, 2] and [r["epoch"] for r in record["history"]] == [0]
