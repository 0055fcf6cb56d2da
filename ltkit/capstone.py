"""The capstone: your own :class:`ltkit.train.Method`, checked, trained under the leaderboard's protocol, ranked.

Notebook 8 (``08_your_method.ipynb``) in three calls::

    report = capstone.check_method(TailRepeat)          # the contract, with clear messages (✓ / ✗ per item)
    records = capstone.train_method(TailRepeat, seeds=demo.SEEDS, out_dir="runs/08_your_method")
    kit, notes = capstone.leaderboard_records("../runs/leaderboard/digits-lt")   # the kit's methods, where trained

then ``launch.compare({**kit, **records}, baselines=...)`` and ``widgets.explore(...)``.

The contract (:func:`check_method`)
-----------------------------------
A method is a subclass of :class:`ltkit.train.Method` with a ``name``, its
parameters declared once as a frozen dataclass ``Params`` (fields with
:func:`ltkit.checks.param` ranges, every field with a default), registered with
:func:`ltkit.train.register_method`, that uses only the public services of
:class:`ltkit.train.Context` (``ctx.generator(...)`` / ``ctx.rng(...)``,
``ctx.images(...)``, ``ctx.local(...)``, ``ctx.loss(...)``, ...).  The check
builds it with its defaults and runs its hooks on a small ``digits-lt`` context
(the preset's small CNN, its real batches) for a couple of optimiser steps at
the first epoch and at the middle one (methods that switch on after a few epochs
are exercised too), then checks:

* ``batch()`` returns a :class:`~ltkit.train.Batch` whose ``x`` (float images of
  the input's shape, finite, in ``[0, 1]``) and ``y`` (class indices) have the same
  length, with ``y2`` of that length and ``0 <= lam <= 1`` when it mixes;
* ``loss()`` returns ``None`` (the engine's loss) or one finite number with a gradient;
* its draws do not depend on the global random number generators: two runs with
  the same seed, whose global torch / NumPy / Python generators are set to
  different states, give identical batches, and ``epoch_start`` / ``batch`` /
  ``epoch_end`` leave those generators untouched (the engine seeds only torch's, and
  only once: a resumed run or another number of processes would draw differently);
* ``state_dict()`` round-trips through a ``weights_only`` checkpoint (tensors and
  plain Python data) and ``load_state_dict`` restores it;
* ``Params`` refuses unknown parameter names (``TailRepeat(no_such_parameter=1)``).

Worker processes
----------------
A class defined in a notebook cell lives in the kernel only: worker processes
(``workers > 1``: ``spawn``) and ``torchrun`` (``nproc > 1``) cannot import it.
:func:`train_method` therefore trains it **in this kernel** with ``workers=1,
nproc=1`` (through :func:`ltkit.launch.run_grid`), and otherwise writes the
*definitions* of the cell that defines the class (imports, classes, functions and
assignments; bare expressions such as ``print(...)`` or a ``check_method(...)``
call are left out) to a module file (:func:`export_method`) that every worker
imports before training.  The cell must then hold everything the class needs;
:func:`check_method` says whether it does (a warning, not an error: ``workers=1``
always works).  The kit's own baselines train through :func:`ltkit.launch.run_grid`
as usual, ``workers`` at a time.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import json
import linecache
import math
import random
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from . import checks, launch, losses, runs, train

__all__ = ["CheckItem", "CheckReport", "MethodContractError", "check_method", "method_definitions",
           "export_method", "load_method_module", "train_method", "find_runs", "leaderboard_records",
           "protocol_differences", "PROTOCOL_FIELDS", "METHOD_FIELDS"]

#: TrainConfig fields that make the protocol: two runs compared on a leaderboard must agree on all of them.
PROTOCOL_FIELDS = ("dataset", "imbalance_factor", "data_seed", "subset", "augment", "crop_padding", "image_size",
                   "model", "model_params", "epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov",
                   "warmup_epochs", "schedule", "milestones", "step_gamma", "many", "few", "max_steps",
                   "max_test_images", "seed")
#: ... and the fields that make the method: a reused baseline run must agree on these too.
METHOD_FIELDS = ("loss", "loss_params", "sampler", "sampler_params", "method", "method_params")
TOLERANCE = 1e-6  # images may exceed [0, 1] by float rounding only
_NOISE = (1_000_003, 2_000_029)  # the two global-RNG states of the determinism check
#: The items of a :class:`CheckReport`, in order (plus "worker processes", a warning).
CHECKS = ("class", "Params", "unknown parameters", "hooks", "batch()", "loss()", "random draws", "state_dict()")


class MethodContractError(checks.LtkitError, ValueError):
    """A method that breaks the engine's contract (the message lists every failed check)."""


# =========================================================================== the report
@dataclass
class CheckItem:
    """One line of a :class:`CheckReport`: ``ok`` True / False, or None (not run: an earlier check failed)."""

    check: str
    ok: bool | None
    message: str
    level: str = "error"  # "error" (the method cannot train) or "warning" (it can, with a caveat)

    @property
    def mark(self) -> str:
        if self.ok:
            return "✓"
        return "–" if self.ok is None else ("!" if self.level == "warning" else "✗")


@dataclass
class CheckReport:
    """What :func:`check_method` found: one :class:`CheckItem` per part of the contract."""

    method: str
    items: list[CheckItem] = field(default_factory=list)
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)  # what the hooks did: steps, images in / out, mixed steps, losses

    @property
    def ok(self) -> bool:
        """True when every error-level check passed (warnings allowed)."""
        return all(item.ok for item in self.items if item.level == "error")

    @property
    def failures(self) -> list[CheckItem]:
        return [item for item in self.items if item.level == "error" and not item.ok]

    @property
    def warnings(self) -> list[CheckItem]:
        return [item for item in self.items if item.level == "warning" and item.ok is False]

    def item(self, check: str) -> CheckItem:
        """The item called ``check`` (e.g. ``"batch()"``)."""
        for item in self.items:
            if item.check == check:
                return item
        raise KeyError(f"no check {check!r}; there are: {', '.join(i.check for i in self.items)}")

    def add(self, check: str, ok: bool | None, message: str, level: str = "error") -> None:
        self.items.append(CheckItem(check, ok, message, level))

    def require(self) -> "CheckReport":
        """Raise :class:`MethodContractError` listing the failed checks; return the report when it passes."""
        if not self.ok:
            lines = "; ".join(f"{item.check}: {item.message}" for item in self.failures if item.ok is False)
            raise MethodContractError(f"method {self.method!r} breaks the contract: {lines}")
        return self

    def summary(self) -> str:
        if self.ok:
            extra = f", {len(self.warnings)} warning(s)" if self.warnings else ""
            return f"method {self.method!r} passes every check{extra} ({self.seconds:.1f} s)"
        return f"method {self.method!r} fails {len(self.failures)} check(s) ({self.seconds:.1f} s)"

    def __str__(self) -> str:
        return "\n".join([self.summary(), *(f"  {i.mark} {i.check}: {i.message}" for i in self.items)])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html

        colours = {"✓": "#1b7f3b", "✗": "#b3261e", "!": "#9a6700", "–": "#777"}
        rows = "".join(
            f'<tr><td style="color:{colours[i.mark]};font-weight:bold;white-space:nowrap">{i.mark} '
            f'{html.escape(i.check)}</td><td style="text-align:left">{html.escape(i.message)}</td></tr>'
            for i in self.items)
        colour = colours["✓"] if self.ok else colours["✗"]
        return (f'<div style="border-left:4px solid {colour};padding:4px 10px"><b style="color:{colour}">'
                f'{html.escape(self.summary())}</b><table style="margin-top:4px">{rows}</table></div>')


class _Stop(Exception):
    """An item failed: later checks that depend on it are not run."""


# =========================================================================== helpers
def _code_files(cls: type) -> set[str]:
    """The files (or notebook cells) that hold the code of ``cls``'s own functions."""
    files = set()
    for value in vars(cls).values():
        func = getattr(value, "__func__", value)
        func = getattr(func, "fget", func)
        code = getattr(func, "__code__", None)
        if code is not None:
            files.add(code.co_filename)
    return files


def _where(err: BaseException, files: set[str]) -> str:
    """``" (line 12 of your code: `y = ...`)"``: the deepest frame of the traceback in the method's own code."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename in files]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (line {frame.lineno} of your code: `{(frame.line or '').strip()}`)"


def _describe_error(err: BaseException, files: set[str]) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}{_where(err, files)}"


def _global_rng_state() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _touched(before: tuple, after: tuple) -> list[str]:
    names = []
    if not torch.equal(before[0], after[0]):
        names.append("torch's (torch.rand / randint / randn / randperm / multinomial without generator=)")
    b, a = before[1], after[1]
    if b[0] != a[0] or not np.array_equal(b[1], a[1]) or b[2:] != a[2:]:
        names.append("NumPy's (np.random.*; use ctx.rng(...), a np.random.Generator)")
    if before[2] != after[2]:
        names.append("Python's (random.*)")
    return names


def _set_global_rngs(seed: int, which: str = "all") -> None:
    if which in ("all", "torch"):
        torch.manual_seed(seed)
    if which in ("all", "other"):
        np.random.seed(seed % 2**32)
        random.seed(seed)


def _same(a: Any, b: Any) -> bool:
    """Deep equality of state dicts (tensors compared exactly, dtype and shape included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@functools.lru_cache(maxsize=4)
def _data(dataset: str, data_seed: int):
    config = train.preset(dataset, data_seed=data_seed, progress=False)
    return train.load_data(config)


# =========================================================================== running the hooks
@dataclass
class _Trace:
    batches: list[tuple]  # (epoch, step, x, y, y2, lam) per step
    losses: list[float]
    sizes: list[tuple[int, int]]  # (images in, images out) per step
    changed: list[bool]  # batch() changed the engine's images or labels, per step
    own_loss: bool  # loss() returned a value (not None) at least once
    state: Any
    method: Any
    ctx: Any


class _Hooks:
    """Runs a method's hooks like the engine does (one process, CPU) and checks what they return as it goes."""

    def __init__(self, cls: type, *, dataset: str, seed: int, steps: int, epochs: Sequence[int] | None, files: set[str],
                 run_dir: Path, params: dict) -> None:
        self.cls, self.dataset, self.seed, self.steps, self.files, self.run_dir = cls, dataset, seed, steps, files, run_dir
        self.params = dict(params)
        self.config = train.preset(dataset, seed=seed, progress=False)
        self.epochs = list(epochs) if epochs is not None else sorted({0, self.config.epochs // 2})
        self.data = _data(dataset, self.config.data_seed)

    def context(self) -> train.Context:
        config, data = self.config, self.data
        loss_fn = losses.make_loss(config.loss, data.class_counts, **config.loss_params)
        torch.manual_seed(config.seed)  # as the engine does before building the model
        model = train.build_model(config, data, loss_fn)
        ctx = train.Context(config, data, data.class_counts, model, loss_fn, None, torch.device("cpu"),
                            run_dir=self.run_dir)
        ctx.train_x, ctx.train_y = data.x_train, data.y_train
        return ctx

    def call(self, hook: str, fn: Callable, *args: Any, watch_rng: bool = True) -> Any:
        before = _global_rng_state() if watch_rng else None
        try:
            value = fn(*args)
        except Exception as err:  # noqa: BLE001  (the participant's code: explain, never crash)
            raise _HookFailure(hook, f"{hook} raised {_describe_error(err, self.files)}") from err
        if watch_rng:
            touched = _touched(before, _global_rng_state())
            if touched:
                raise _HookFailure("random draws", f"{hook} drew from the global random number generator: "
                                   f"{' and '.join(touched)}. Draw through ctx.generator(\"your-name\", ctx.epoch, "
                                   "batch.step) (torch) or ctx.rng(...) (NumPy), keyed by epoch and step: the global "
                                   "generators are not in a checkpoint and differ between processes, so a resumed run "
                                   "or a run on 2 GPUs would draw differently.")
        return value

    def run(self, noise: int) -> _Trace:
        """Build, set up, and train ``steps`` steps at each epoch of ``self.epochs``; the global RNGs set to ``noise``."""
        _set_global_rngs(noise, "other")  # the engine never seeds NumPy's or Python's generators
        ctx = self.context()
        method = self.call("building it", lambda: self.cls(**self.params), watch_rng=False)
        self.call("setup()", method.setup, ctx, watch_rng=False)  # new modules may initialise from torch's seeded RNG
        ctx.model = ctx.model.to(ctx.device)
        config = self.config
        ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=config.lr, momentum=config.momentum,
                                        weight_decay=config.weight_decay)
        _set_global_rngs(noise, "torch")  # a resumed run starts with a fresh global torch generator
        trace = _Trace([], [], [], [], False, None, method, ctx)
        channels, height, width = self.data.image_shape
        classes = self.data.num_classes
        for epoch in self.epochs:
            ctx.epoch = epoch
            ctx.loss_fn.set_epoch(epoch)
            self.call("epoch_start()", method.epoch_start, ctx, epoch)
            ctx.model.train()
            batches = train.tensor_batches(ctx, epoch)
            for _ in range(self.steps):
                batch = next(batches)
                images_in = len(batch.y)
                given = (batch.x.clone(), batch.y.clone())
                out = self.call("batch()", method.batch, ctx, batch)
                _check_batch(out, images_in, (channels, height, width), classes, epoch)
                with ctx.autocast():
                    value = self.call("loss()", method.loss, ctx, out, watch_rng=False)
                    own = value is not None
                    if not own:
                        value = ctx.mixed_loss(ctx.model(out.x), out)
                _check_loss(value, own, epoch, out.step)
                trace.own_loss |= own
                ctx.optimizer.zero_grad(set_to_none=True)
                try:
                    value.backward()
                except RuntimeError as err:
                    raise _HookFailure("loss()", f"backward() of the loss failed at epoch {epoch}: "
                                       f"{_describe_error(err, self.files)}") from err
                ctx.optimizer.step()
                trace.losses.append(float(value.detach()))
                trace.sizes.append((images_in, len(out.y)))
                trace.changed.append(len(out.y) != images_in or not torch.equal(out.x, given[0])
                                     or not torch.equal(out.y, given[1]) or out.y2 is not None)
                trace.batches.append((epoch, out.step, out.x.detach().cpu().clone(), out.y.detach().cpu().clone(),
                                      None if out.y2 is None else out.y2.detach().cpu().clone(), float(out.lam)))
            self.call("epoch_end()", method.epoch_end, ctx, epoch)
        trace.state = self.call("state_dict()", method.state_dict, watch_rng=False)
        return trace


class _HookFailure(Exception):
    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check, self.message = check, message


def _check_batch(out: Any, images_in: int, shape: tuple[int, int, int], classes: int, epoch: int) -> None:
    where = f"at epoch {epoch}"
    if not isinstance(out, train.Batch):
        raise _HookFailure("batch()", f"batch() returned {type(out).__name__}, not an ltkit.train.Batch {where}: "
                           "return the batch you were given, or dataclasses.replace(batch, x=..., y=...).")
    x, y = out.x, out.y
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise _HookFailure("batch()", f"batch.x and batch.y must be tensors {where}; got {type(x).__name__} and "
                           f"{type(y).__name__}.")
    if len(x) != len(y):
        raise _HookFailure("batch()", f"batch() returned {len(x)} images but {len(y)} labels {where} (the engine "
                           f"gave {images_in} of each): x and y must have the same length: when you add or drop "
                           "images, add or drop their labels too.")
    if len(y) == 0:
        raise _HookFailure("batch()", f"batch() returned an empty batch {where}.")
    if not x.is_floating_point() or x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise _HookFailure("batch()", f"batch.x must be float images of shape (N, {', '.join(map(str, shape))}) "
                           f"{where}; got {x.dtype} {tuple(x.shape)} (ctx.images(...) gives such images).")
    if not bool(torch.isfinite(x).all()):
        raise _HookFailure("batch()", f"batch.x holds NaN or infinite pixels {where}.")
    low, high = float(x.min()), float(x.max())
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        raise _HookFailure("batch()", f"images must stay in [0, 1], but batch.x spans [{low:.3g}, {high:.3g}] {where}: "
                           "mix with weights that sum to 1 (λ·a + (1 - λ)·b), clamp(0, 1) after adding noise, and do "
                           "not normalise (the model sees what the test set gives it: pixels in [0, 1]).")
    if y.dtype != torch.int64 or y.dim() != 1:
        raise _HookFailure("batch()", f"batch.y must be a 1-d int64 tensor of class indices {where}; got {y.dtype} "
                           f"{tuple(y.shape)} (soft labels: give y, y2 and lam instead).")
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise _HookFailure("batch()", f"batch.y holds labels outside [0, {classes}) {where}: "
                           f"[{int(y.min())}, {int(y.max())}].")
    if out.y2 is not None:
        y2 = out.y2
        if not isinstance(y2, torch.Tensor) or len(y2) != len(y) or y2.dtype != torch.int64:
            raise _HookFailure("batch()", f"batch.y2 (the second labels of a mixed batch) must be an int64 tensor as "
                               f"long as y ({len(y)}) {where}.")
        if int(y2.min()) < 0 or int(y2.max()) >= classes:
            raise _HookFailure("batch()", f"batch.y2 holds labels outside [0, {classes}) {where}.")
    lam = out.lam
    if isinstance(lam, torch.Tensor):
        raise _HookFailure("batch()", f"batch.lam must be a Python float {where} (float(lam)), not a tensor.")
    if not isinstance(lam, (int, float)) or not math.isfinite(lam) or not 0 <= lam <= 1:
        raise _HookFailure("batch()", f"batch.lam={lam!r} must be a number in [0, 1] {where} (the weight of y; y2 "
                           "gets 1 - lam).")


def _check_loss(value: Any, own: bool, epoch: int, step: int) -> None:
    who = "loss()" if own else "the engine's loss of your batch"
    where = f"at epoch {epoch}, step {step}"
    if not isinstance(value, torch.Tensor):
        raise _HookFailure("loss()", f"loss() returned {type(value).__name__} {where}; return None (the engine's "
                           "loss) or a tensor: ctx.loss(ctx.loss_fn, logits, labels).")
    if value.numel() != 1 or value.dim() != 0:
        raise _HookFailure("loss()", f"{who} has shape {tuple(value.shape)} {where}; it must be one number (a 0-d "
                           "tensor): ctx.loss(...) gives the mean over the global batch.")
    if not bool(torch.isfinite(value.detach())):
        raise _HookFailure("loss()", f"{who} is {float(value.detach())} {where}: not finite. Look for log(0), a "
                           "division by zero or a count that can be 0 (clamp_min, + eps).")
    if not value.requires_grad:
        raise _HookFailure("loss()", f"{who} has no gradient {where}: compute it from ctx.model(batch.x) (no "
                           ".item(), .detach() or torch.no_grad() on the way).")


# =========================================================================== the check
def check_method(cls: type, params: dict | None = None, *, dataset: str = "digits-lt", seed: int = 0, steps: int = 2,
                 epochs: Sequence[int] | None = None, portable: bool = True) -> CheckReport:
    """Check a :class:`ltkit.train.Method` subclass against the engine's contract; returns a :class:`CheckReport`.

    Builds it with its defaults (or ``params``, its ``method_params``) and runs its hooks like the engine (one process,
    CPU, the ``dataset`` preset's model and batches) for ``steps`` optimiser steps
    at each of ``epochs`` (default: the first and the middle epoch of the preset),
    twice, with the global random generators in different states.  See the module
    docstring for the list.  ``portable``: also check that the definitions of the
    class's cell can be written to a module that worker processes import
    (:func:`export_method`; a warning when not).  Display the report in a notebook;
    ``report.require()`` raises :class:`MethodContractError` when a check failed.
    """
    started = time.perf_counter()
    report = CheckReport(getattr(cls, "name", getattr(cls, "__name__", repr(cls))))
    params = dict(params or {})
    try:
        _check_class(cls, report)
        _check_params(cls, report, params)
        with tempfile.TemporaryDirectory(prefix="ltkit-check-") as tmp:
            hooks = _Hooks(cls, dataset=dataset, seed=seed, steps=steps, epochs=epochs, files=_code_files(cls),
                           run_dir=Path(tmp), params=params)
            first = _check_hooks(hooks, report)
            _check_state(hooks, first, report, Path(tmp))
            if portable:
                _check_portable(cls, report, dataset, seed, Path(tmp), params)
    except _Stop:
        pass
    finally:
        report.seconds = time.perf_counter() - started
    for name in CHECKS:
        if name not in {i.check for i in report.items}:
            report.add(name, None, "not checked: an earlier check failed")
    return report


def _check_class(cls: Any, report: CheckReport) -> None:
    if not isinstance(cls, type) or not issubclass(cls, train.Method):
        what = cls.__name__ if isinstance(cls, type) else f"a {type(cls).__name__}"
        hint = " (pass the class itself, not an instance)" if isinstance(cls, train.Method) else ""
        report.add("class", False, f"{what} is not a subclass of ltkit.train.Method{hint}: write "
                   "`class MyMethod(train.Method):`.")
        raise _Stop
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name or name == "none":
        report.add("class", False, f"{cls.__name__} needs its own name: a class attribute such as "
                   "name = \"tail-repeat\" (configs refer to it by that name).")
        raise _Stop
    try:
        runs.safe_name(name)
    except checks.InputError as err:
        report.add("class", False, f"name {name!r} cannot name runs: {err}")
        raise _Stop from None
    try:
        registered = train.method_class(name)
    except ValueError:
        report.add("class", False, f"{cls.__name__} ({name!r}) is not registered: put @train.register_method on the "
                   "line above `class`, then run the cell again.")
        raise _Stop from None
    if registered is not cls:
        report.add("class", False, f"the name {name!r} is registered to another class ({registered.__module__}."
                   f"{registered.__qualname__}): run the cell that defines {cls.__name__} again (it registers it), or "
                   "choose a name of your own.")
        raise _Stop
    report.add("class", True, f"{cls.__name__} subclasses ltkit.train.Method and is registered as {name!r}")


def _check_params(cls: type, report: CheckReport, params: dict) -> None:
    params_cls = cls.Params
    if not dataclasses.is_dataclass(params_cls) or not params_cls.__dataclass_params__.frozen:
        report.add("Params", False, f"{cls.__name__}.Params must be a frozen dataclass: @dataclass(frozen=True) on "
                   "a class whose fields are your parameters (checks.param(default, low=..., high=...)).")
        raise _Stop
    fields = dataclasses.fields(params_cls)
    no_default = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if no_default:
        report.add("Params", False, f"parameter(s) {no_default} of {params_cls.__name__} have no default: give each "
                   "one (param(16, low=0)), so that the method builds with its defaults.")
        raise _Stop
    built = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
    try:
        method = cls(**params)
    except Exception as err:  # noqa: BLE001
        with_what = "with its defaults" if not params else "with these parameters"
        report.add("Params", False, f"building {built} {with_what} raised {_describe_error(err, _code_files(cls))}")
        raise _Stop from None
    if not isinstance(getattr(method, "params", None), params_cls):
        report.add("Params", False, f"{cls.__name__}() has no self.params of type {params_cls.__name__}: if you "
                   "write __init__, call super().__init__(**params) first.")
        raise _Stop
    unranged = [f.name for f in fields if not (f.metadata and (f.metadata.get("low") is not None or f.metadata.get(
        "high") is not None or f.metadata.get("choices") is not None)) and _numeric_or_text(f)]
    values = ", ".join(f"{f.name}={getattr(method.params, f.name)!r}" for f in fields) or "no parameters"
    if unranged:
        report.add("Params", True, f"{params_cls.__name__}: {values}; declare a range for {unranged} "
                   "(checks.param(default, low=..., high=..., choices=...)) so that bad values get a clear error")
    else:
        report.add("Params", True, f"{params_cls.__name__} builds: {values}")
    try:
        cls(**params, no_such_parameter=1)
    except checks.InputError as err:
        if "no_such_parameter" in str(err):
            report.add("unknown parameters", True, f"{cls.__name__}(no_such_parameter=1) is refused: {err}")
            return
        report.add("unknown parameters", False, f"{cls.__name__}(no_such_parameter=1) raised an error that does not "
                   f"name the parameter: {err}")
        return
    except Exception as err:  # noqa: BLE001
        report.add("unknown parameters", False, f"{cls.__name__}(no_such_parameter=1) raised "
                   f"{type(err).__name__} ({err}) instead of ltkit's InputError: let ltkit.train.Method.__init__ check "
                   "the parameters (call super().__init__(**params), do not take **kwargs yourself).")
        return
    report.add("unknown parameters", False, f"{cls.__name__}(no_such_parameter=1) was accepted: a misspelt "
               "parameter would be silently ignored. Do not override __init__ with **kwargs of your own; "
               "ltkit.train.Method.__init__ checks them against Params.")


def _numeric_or_text(f: dataclasses.Field) -> bool:
    annotation = f.type.__name__ if isinstance(f.type, type) else str(f.type)
    kinds = {a.strip() for a in annotation.split("|")}
    return bool(kinds & {"int", "float", "str"})


def _check_hooks(hooks: _Hooks, report: CheckReport) -> _Trace:
    try:
        first = hooks.run(_NOISE[0])
    except _HookFailure as failure:
        if failure.check in ("batch()", "loss()", "random draws", "state_dict()"):
            report.add("hooks", True, "the hooks before the failure ran")
            report.add(failure.check, False, failure.message)
        else:
            report.add("hooks", False, failure.message)
        raise _Stop from None
    epochs = " and ".join(str(e) for e in hooks.epochs)
    report.stats.update(steps=len(first.sizes), images_in=[n for n, _ in first.sizes],
                        images_out=[n for _, n in first.sizes], changed_steps=sum(first.changed),
                        mixed_steps=sum(b[4] is not None and b[5] < 1 for b in first.batches),
                        losses=list(first.losses), own_loss=first.own_loss)
    report.add("hooks", True, f"setup, epoch_start, batch, loss and epoch_end ran for {hooks.steps} step(s) at "
               f"epochs {epochs} of {hooks.config.epochs} ({hooks.dataset}, {hooks.config.model})")
    sizes = sorted({out for _, out in first.sizes})
    added = sorted({out - n for n, out in first.sizes})
    mixing = [b for b in first.batches if b[4] is not None and b[5] < 1]
    lows = min(float(b[2].min()) for b in first.batches)
    highs = max(float(b[2].max()) for b in first.batches)
    if not any(first.changed):
        change = "the engine's batches unchanged (a method that only changes the loss?)"
    elif added == [0]:
        change = f"the engine's batches changed, {'/'.join(map(str, sizes))} images per step as given"
    else:
        change = (f"{'/'.join(map(str, sizes))} images per step ({'/'.join(f'{a:+d}' for a in added)} vs the "
                  "engine's)")
    mixed = f", {len(mixing)} of {len(first.batches)} steps mixed (y2, λ)" if mixing else ""
    report.add("batch()", True, f"returns a Batch: {change}{mixed}; labels in range, images in [{lows:.2g}, "
               f"{highs:.2g}]")
    losses_text = ", ".join(f"{v:.3g}" for v in first.losses)
    report.add("loss()", True, (f"returns a finite number with a gradient ({losses_text})" if first.own_loss else
                                f"returns None: the engine's loss of your batch, finite ({losses_text})"))
    try:
        second = hooks.run(_NOISE[1])
    except _HookFailure as failure:
        report.add("random draws", False, f"a second run with the same seed failed where the first did not: "
                   f"{failure.message}")
        raise _Stop from None
    for a, b in zip(first.batches, second.batches):
        epoch, step = a[0], a[1]
        differs = [name for name, u, v in (("images", a[2], b[2]), ("labels", a[3], b[3]), ("y2", a[4], b[4]))
                   if not _same(u, v)] + (["lam"] if a[5] != b[5] else [])
        if differs:
            report.add("random draws", False, f"two runs with the same seed gave different batches ({', '.join(differs)}"
                       f" differ at epoch {epoch}, step {step}): a draw depends on the global random generators or on "
                       "something else that changes between runs (time, id(), set order). Draw through "
                       "ctx.generator(\"your-name\", ctx.epoch, batch.step) / ctx.rng(...).")
            raise _Stop
    report.add("random draws", True, "two runs with the same seed and different global RNG states give identical "
               "batches; the hooks leave the global generators alone")
    return first


def _check_state(hooks: _Hooks, trace: _Trace, report: CheckReport, tmp: Path) -> None:
    state = trace.state
    if not isinstance(state, dict):
        report.add("state_dict()", False, f"state_dict() returned {type(state).__name__}; it must return a dict "
                   "({} when the method keeps no state).")
        raise _Stop
    path = tmp / "checkpoint.pt"
    try:
        runs.save_checkpoint(path, {"method": state})
    except Exception as err:  # noqa: BLE001
        report.add("state_dict()", False, f"the state cannot be saved with torch.save ({type(err).__name__}: {err}).")
        raise _Stop from None
    try:
        loaded = runs.load_checkpoint(path)["method"]
    except (runs.CheckpointError, checks.LtkitError, OSError, ValueError) as err:
        report.add("state_dict()", False, f"a weights_only checkpoint refuses the state ({' '.join(str(err).split())[:300]}):"
                   " keep state_dict() to tensors and plain Python data (dict, list, int, float, str, bool, None); "
                   "turn NumPy arrays into tensors (torch.as_tensor) and objects into dicts.")
        raise _Stop from None
    try:
        ctx = hooks.context()
        fresh = hooks.cls(**hooks.params)
        fresh.setup(ctx)
        fresh.load_state_dict(loaded)
        again = fresh.state_dict()
    except Exception as err:  # noqa: BLE001
        report.add("state_dict()", False, f"load_state_dict() of the saved state raised "
                   f"{_describe_error(err, hooks.files)}")
        raise _Stop from None
    if not _same(again, state):
        keys = sorted(str(k) for k in set(state) | set(again if isinstance(again, dict) else {})
                      if not (isinstance(again, dict) and k in state and k in again and _same(state[k], again[k])))
        report.add("state_dict()", False, f"after load_state_dict(state), state_dict() differs (key(s) {keys[:5]}): "
                   "load_state_dict must restore everything state_dict saves (a resumed run continues from it).")
        raise _Stop
    what = f"{len(state)} entr{'y' if len(state) == 1 else 'ies'}" if state else "{}: no state to save"
    report.add("state_dict()", True, f"round-trips through a weights_only checkpoint ({what})")


def _check_portable(cls: type, report: CheckReport, dataset: str, seed: int, tmp: Path, params: dict) -> None:
    name = "worker processes"
    if cls.__module__ != "__main__" and _importable(cls):
        report.add(name, True, f"importable from {cls.__module__}: workers and torchrun can train it", "warning")
        return
    try:
        path = export_method(cls, tmp / "export")
        copy = _load_isolated(path, cls)
        hooks = _Hooks(copy, dataset=dataset, seed=seed, steps=1, epochs=None, files={str(path)}, run_dir=tmp,
                       params=params)
        hooks.run(_NOISE[0])
    except (_HookFailure, Exception) as err:  # noqa: BLE001
        detail = err.message if isinstance(err, _HookFailure) else _describe_error(err, set())
        report.add(name, False, f"the definitions of its cell alone do not make a working method ({detail}): the "
                   "cell probably uses a name defined in another cell. Train with workers=1 (in this kernel), or "
                   "move everything the method needs into its cell.", "warning")
        return
    report.add(name, True, "its cell holds everything it needs: with workers > 1 or nproc > 1 the definitions of the "
               "cell are written to a module that every worker imports", "warning")


def _importable(cls: type) -> bool:
    module = sys.modules.get(cls.__module__)
    return module is not None and getattr(module, "__file__", None) is not None and \
        getattr(module, cls.__qualname__, None) is cls and cls.__module__.split(".")[0] in ("ltkit",)


# =========================================================================== exporting a notebook's method
_KEPT = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign, ast.AnnAssign)
_NOT_IN_MODULE = ("capstone", "check_method", "train_method", "display", "print")


def method_definitions(cls: type) -> str:
    """The definitions of the cell (or file) that defines ``cls``: imports, classes, functions and assignments.

    Bare expressions (``print(...)``, ``report``, a magic) and statements that call
    the capstone (``check_method(...)``) are left out, so that importing the result
    defines the method and registers it, and nothing else.
    """
    files = _code_files(cls)
    if len(files) != 1:
        raise MethodContractError(f"cannot find the code of {cls.__name__}: it defines no function of its own"
                                  if not files else f"{cls.__name__}'s functions come from several cells or files "
                                  f"({sorted(files)}): define the whole class in one cell.")
    filename = files.pop()
    lines = linecache.getlines(filename)
    if not lines and Path(filename).is_file():
        lines = Path(filename).read_text().splitlines(keepends=True)
    if not lines:
        raise MethodContractError(f"the source of {cls.__name__} ({filename}) is not available.")
    source = "".join(lines)
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise MethodContractError(f"the cell of {cls.__name__} cannot be parsed as Python ({err}).") from None
    kept = []
    for node in tree.body:
        if not isinstance(node, _KEPT):
            continue
        text = ast.get_source_segment(source, node, padded=False) or ""
        start = node.decorator_list[0].lineno if getattr(node, "decorator_list", None) else node.lineno
        text = "".join(lines[start - 1:node.end_lineno])
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(word in text for word in _NOT_IN_MODULE):
            continue
        kept.append(text.rstrip() + "\n")
    if not any(isinstance(n, ast.ClassDef) and n.name == cls.__name__ for n in tree.body):
        raise MethodContractError(f"the cell that holds {cls.__name__}'s code does not define it at top level.")
    return "\n\n".join(kept)


def _module_name(cls: type) -> str:
    return "ltkit_user_" + runs.safe_name(cls.name).replace("-", "_").replace(".", "_")


def export_method(cls: type, folder: str | Path) -> Path:
    """Write :func:`method_definitions` of ``cls`` to ``folder/ltkit_user_<name>.py`` (for worker processes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_module_name(cls)}.py"
    header = (f"# Written by ltkit.capstone.export_method: the definitions of the cell that defines {cls.__name__}\n"
              "# (method name {!r}), for worker processes. Edit the notebook, not this file: it is rewritten\n"
              "# every time the method trains with workers > 1 or nproc > 1.\n\n").format(cls.name)
    text = header + method_definitions(cls)
    if not path.is_file() or path.read_text() != text:
        runs.atomic_write_bytes(path, lambda f: f.write(text.encode()))
    return path


def load_method_module(path: str | Path) -> Any:
    """Import a module written by :func:`export_method` (it registers the method in this process)."""
    path = Path(path).resolve()
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise MethodContractError(f"{path} cannot be imported as a module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_isolated(path: Path, cls: type) -> type:
    """Import an exported module in this process and return its class, leaving ``cls`` registered under its name."""
    registered = {name: train.method_class(name) for name in train.method_names()}
    try:
        module = load_method_module(path)
    finally:  # the module registered its own copies: the kernel's classes stay the ones in use
        for name, original in registered.items():
            if train.method_class(name) is not original:
                train.register_method(original)
        train.register_method(cls)
        sys.modules.pop(path.stem, None)
    copy = getattr(module, cls.__name__, None)
    if not isinstance(copy, type):
        raise MethodContractError(f"the exported module does not define {cls.__name__}.")
    return copy


def _fit_with_module(module_path: str, config: train.TrainConfig) -> dict:
    """A worker's job: import the exported method (once per process), then train."""
    if Path(module_path).stem not in sys.modules:
        load_method_module(module_path)
    return train.fit(config)


# =========================================================================== training under the protocol
def protocol_differences(stored: dict, expected: train.TrainConfig, fields: Iterable[str] = PROTOCOL_FIELDS) -> list[str]:
    """The ``fields`` in which a stored run config differs from ``expected`` (a field it lacks takes its default)."""
    defaults = train.config_defaults()
    want = expected.to_dict()
    out = []
    for name in fields:
        have = stored.get(name, defaults.get(name))
        if json.dumps(have, sort_keys=True, default=str) != json.dumps(want[name], sort_keys=True, default=str):
            out.append(name)
    return out


def find_runs(folder: str | Path, label: str, overrides: dict, seeds: Sequence[int], *, base: str = "digits-lt",
              fields: Sequence[str] = PROTOCOL_FIELDS + METHOD_FIELDS, **common: Any) -> tuple[list[dict] | None, str]:
    """Finished runs ``folder/<safe label>-s<seed>`` for every seed, trained exactly as ``overrides`` asks.

    Returns ``(records, note)``: the records when every seed is there and agrees on
    ``fields`` with the config :func:`ltkit.launch.run_grid` would give, else ``None``
    and why not.
    """
    folder = Path(folder)
    records = []
    for seed in seeds:
        run_dir = folder / launch.grid_run_name(label, seed)
        if not (run_dir / "result.json").is_file():
            return None, f"{run_dir} is missing or unfinished"
        try:
            record = runs.load_run(run_dir)
        except (ValueError, OSError) as err:
            return None, f"{run_dir} cannot be read ({err})"
        expected = launch.grid_config(base, label, seed, overrides, {**common, "out_dir": str(folder)})
        differs = protocol_differences(record["config"], expected, fields)
        if differs:
            return None, f"{run_dir} was trained differently ({', '.join(differs)})"
        records.append(record)
    return records, f"{len(records)} runs of {label!r} reused from {folder}"


def leaderboard_records(folder: str | Path, seeds: Sequence[int] | None = None, *, dataset: str = "digits-lt",
                        **common: Any) -> tuple[dict[str, list[dict]], list[str]]:
    """The kit's line-up (:func:`ltkit.demo.leaderboard_methods`) as trained under ``folder`` (``make demo``: 
    ``runs/leaderboard/<data set>``; notebook 7), for ``seeds`` (default :data:`ltkit.demo.SEEDS`).

    Returns ``({label: records}, notes)``: a method is on the board when every seed
    is finished under the same protocol (:data:`PROTOCOL_FIELDS`; its method fields
    are its own); the notes say what is missing.  Nothing is trained.
    """
    from . import demo

    seeds = list(demo.SEEDS if seeds is None else seeds)
    lineup = demo.leaderboard_methods(dataset, folder)
    how = (f"train them with `python -m ltkit demo --datasets {dataset}` (from the folder holding runs/), or unpack "
           "pre-built runs (python -m ltkit unpack-runs)")
    if not Path(folder).is_dir():
        return {}, [f"none of the kit's {len(lineup)} methods: there is no folder {folder}; {how}."]
    found, missing = {}, []
    for label in lineup:
        records, why = find_runs(folder, label, {}, seeds, base=dataset, fields=PROTOCOL_FIELDS, **common)
        if records is None:
            missing.append(f"{label}: {why}")
        else:
            found[label] = records
    notes = [f"{len(found)} of the kit's {len(lineup)} methods found in {folder} ({len(seeds)} seeds each)"]
    if missing:
        notes.append(f"not on the board ({len(missing)}): " + "; ".join(missing) + f". To add them, {how}.")
    return found, notes


def train_method(method: type | str, *, label: str | None = None, overrides: dict | None = None,
                 baseline: str = "CE", baseline_overrides: dict | None = None, seeds: Sequence[int] | None = None,
                 base: str = "digits-lt", out_dir: str | Path = "runs", reuse_from: Sequence[str | Path] = (),
                 workers: int = 1, nproc: int = 1, check: bool = True, progress: bool = True,
                 background: bool = False, **common: Any) -> "dict[str, list[dict]] | launch.GridJob":
    """Train ``method`` and its baseline for every seed under the ``base`` preset's protocol; ``{label: records}``.

    * ``method``: the class (or its registered name); ``overrides``: its other config
      fields (default ``{"loss": "ce"}``; ``method`` and ``method_params`` may be
      given here); ``label``: its row (default ``"<baseline> + <name>"``).
    * ``baseline``: the label of the run it adds to (default ``"CE"``, i.e. the same
      loss without a method), trained with ``baseline_overrides`` (default: its
      entry in :data:`ltkit.demo.LOSS_BASELINES`) through :func:`ltkit.launch.run_grid`,
      unless finished runs of it with the same protocol and method fields are found
      in one of ``reuse_from`` (e.g. ``make demo``'s leaderboard folder): then they are used.
    * ``seeds``: default :data:`ltkit.demo.SEEDS`; ``common``: fields for every run
      (``epochs=``, ``max_steps=``, ...).  Runs go to ``out_dir`` and are reused when
      finished.
    * ``workers=1, nproc=1`` trains the method in this process (a class defined in a
      notebook cell is found); more workers or processes import the definitions of its
      cell from a module file (:func:`export_method`, written under ``out_dir/methods``).
    * ``check``: run :func:`check_method` first and stop on a failed check.
    * ``background=True``: check, find the baseline, then return a :class:`ltkit.launch.GridJob`
      at once: the runs train in a background thread (and its worker processes);
      displaying the job shows the live view of both methods, ``job.wait()`` returns the
      records (the same as a foreground call).
    """
    from . import demo

    cls = train.method_class(method) if isinstance(method, str) else method
    overrides = {"loss": "ce", **(overrides or {})}
    overrides.setdefault("method", cls.name)
    if overrides["method"] != cls.name:
        raise checks.InputError(f"overrides name method {overrides['method']!r} but the class is {cls.name!r}.")
    if check:
        report = check_method(cls, overrides.get("method_params"), portable=workers > 1 or nproc > 1).require()
        portable = next((i for i in report.items if i.check == "worker processes"), None)
        if portable is not None and portable.ok is False:
            if nproc > 1:
                raise MethodContractError(f"nproc={nproc} needs the method in a module: {portable.message}")
            print(f"{cls.name}: trained in this kernel, one run at a time (workers=1): {portable.message}", flush=True)
            method_workers = 1
        else:
            method_workers = workers
    else:
        method_workers = workers
    seeds = list(demo.SEEDS if seeds is None else seeds)
    label = label or f"{baseline} + {cls.name}"
    if baseline_overrides is None:
        if baseline not in demo.LOSS_BASELINES:
            raise checks.InputError(f"baseline {baseline!r} is not one of ltkit.demo.LOSS_BASELINES "
                                    f"({', '.join(demo.LOSS_BASELINES)}): pass baseline_overrides=dict(loss=...).")
        baseline_overrides = demo.LOSS_BASELINES[baseline]
    reused = None
    for folder in reuse_from:
        reused, note = find_runs(folder, baseline, baseline_overrides, seeds, base=base, **common)
        if reused is not None:
            print(f"baseline: {note}", flush=True)
            break
    configs = [launch.grid_config(base, label, seed, overrides, {**common, "out_dir": str(out_dir)})
               for seed in seeds]
    module = None if method_workers == 1 and nproc == 1 else export_method(cls, Path(out_dir) / "methods")
    bars = progress and not background

    def work() -> dict[str, list[dict]]:
        if reused is not None:
            base_records = reused
        else:
            base_records = launch.run_grid({baseline: baseline_overrides}, seeds, base=base, out_dir=str(out_dir),
                                           workers=workers, nproc=nproc, progress=bars, **common)[baseline]
        if module is None:
            mine = launch.run_grid({label: overrides}, seeds, base=base, out_dir=str(out_dir), workers=1,
                                   progress=bars, **common)[label]
        else:
            mine = _train_exported(configs, str(module), method_workers, nproc, bars, label)
        return {baseline: base_records, label: mine}

    if not background:
        return work()
    base_dirs = ([Path(r["dir"]) for r in reused] if reused is not None else
                 [Path(out_dir) / launch.grid_run_name(baseline, seed) for seed in seeds])
    return launch.GridJob(work, {baseline: base_dirs, label: [Path(c.out_dir) / c.run_name() for c in configs]},
                          interval=2.0)


def _train_exported(configs: list[train.TrainConfig], module: str, workers: int, nproc: int, progress: bool,
                    label: str) -> list[dict]:
    from tqdm.auto import tqdm

    done: dict[int, dict] = {}
    bar = tqdm(total=len(configs), desc=label, disable=not progress)
    for i, config in enumerate(configs):
        finished = (Path(config.out_dir) / config.run_name() / "result.json").is_file()
        if finished or (nproc == 1 and workers == 1):
            done[i] = train.fit(config)
            bar.update()
        elif nproc > 1:
            done[i] = _torchrun(config, nproc, module)
            bar.update()
    pending = [i for i in range(len(configs)) if i not in done]
    if pending:
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=launch.spawn_context()) as pool:
            futures = {pool.submit(_fit_with_module, module, configs[i]): i for i in pending}
            try:
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    return [done[i] for i in range(len(configs))]


def _torchrun(config: train.TrainConfig, nproc: int, module: str) -> dict:
    """``torchrun --nproc_per_node=N -m ltkit.capstone --method-module M --config-json C`` (one node)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config.to_dict(), f)
    command = [str(torchrun) if torchrun.exists() else "torchrun", f"--nproc_per_node={nproc}", "--standalone",
               "-m", "ltkit.capstone", "--method-module", module, "--config-json", f.name]
    tail: list[str] = []
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            for line in proc.stdout:
                print(line, end="", flush=True)
                tail = (tail + [line])[-40:]
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}; its last lines:\n{''.join(tail)}")
    return runs.load_run(Path(config.out_dir) / config.run_name())


# =========================================================================== command line (torchrun)
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ltkit.capstone --method-module FILE <ltkit.train options>``: import the method, then train."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--method-module" not in argv or argv.index("--method-module") + 1 >= len(argv):
        raise SystemExit("usage: python -m ltkit.capstone --method-module FILE [python -m ltkit.train options]")
    i = argv.index("--method-module")
    load_method_module(argv[i + 1])
    del argv[i:i + 2]
    from .cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
