"""The training engine: one ``fit`` from a laptop CPU to multi-GPU DDP.

``fit(config)`` trains a model on a long-tailed data set and writes a run
record (see :mod:`ltkit.runs`).  The same entry point runs as

    python -m ltkit.train --preset digits-lt --loss bs --seed 1
    torchrun --nproc_per_node=8 -m ltkit.train --preset cifar100-lt --loss ldam-drw

(NCCL on GPUs, gloo on CPU; multi-node through torchrun's rendezvous), and
from a notebook through :func:`ltkit.launch.run`, which scales a cell from one
to eight GPUs by changing one number.

Design
------
* Small data sets (``digits-lt``, CIFAR-LT) live on the device as ``uint8``
  tensors; each batch is gathered by index, converted to float in [0, 1] and
  augmented as a whole batch (random crop with zero padding, horizontal flip).
  Large ones (split files: ImageNet-LT, Places-LT, iNaturalist) go through
  ``DataLoader`` workers with ``torchvision.transforms.v2``.
* Randomness is derived from ``(seed, epoch)`` and global positions: the epoch's
  sample order (the same global draw on every rank, split into disjoint per-rank
  shards) and the augmentation of every position of the epoch.  A
  resumed run therefore replays exactly what an uninterrupted one would have
  done (bit-exact on CPU).
* ``batch_size`` is the *global* batch; each of ``W`` ranks takes
  ``batch_size / W``.  Metrics (loss sums, confusion matrices) are all-reduced;
  only rank 0 writes.
* Learning rate per epoch: linear warm-up over ``warmup_epochs``, then
  ``step`` (multiplied by ``step_gamma`` at every milestone passed: the
  LDAM / CMO schedule is ``0.1 → ×0.01 at 160 → ×0.0001 at 180``) or
  ``cosine``.  SGD with momentum and weight decay.
* channels_last weights.  On a GPU: bf16 autocast, optional ``torch.compile``.  On a CPU
  with native bf16 (AVX512-BF16 or AMX), ``cpu_amp=True`` turns bf16 autocast on
  there too: ResNet-32 trains about 1.9x faster on such a CPU (off by default,
  so that CPU results stay fp32).

Hook points (:class:`Method`)
-----------------------------
A method (CMO, Syn-LT, CWS, feedback synthesis) subclasses :class:`Method`
and overrides only what it needs; every hook has a no-op default:

``setup(ctx)``
    after data, model and loss exist, before the optimiser is built (so
    modules a method adds to ``ctx.model`` are trained) and before DDP wraps the
    model: may wrap the model (its ``forward`` must return class logits, and
    it should keep ``features`` / ``head``), replace the head, add training
    data to ``ctx.train_x`` / ``ctx.train_y``.
``epoch_start(ctx, epoch)`` / ``epoch_end(ctx, epoch)``
    per-epoch work (e.g. refresh prototypes, synthesise a data set).
``batch(ctx, batch) -> Batch``
    change the images and labels of a training batch (mixing, replacing
    slots); a :class:`Batch` carries ``x, y`` and optionally a second label
    ``y2`` with weight ``1 - lam`` (CutMix-style mixing).
``loss(ctx, batch) -> Tensor | None``
    compute the training loss yourself (e.g. a loss on sub-class logits);
    ``None`` means the default ``lam·L(f(x), y) + (1-lam)·L(f(x), y2)``.
``state_dict()`` / ``load_state_dict(state)``
    whatever must survive a checkpoint.

Register a method with :func:`register_method`; configs name it by string.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import socket
import zlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as ltdata
from . import checks, losses, metrics, models, runs, sampling


# =========================================================================== config
@dataclass
class TrainConfig:
    """Everything a run depends on.  Presets: :data:`PRESETS`."""

    # data
    dataset: str = "digits-lt"
    data_root: str | None = None
    imbalance_factor: float | None = None  # None: the data set's default
    data_seed: int = 0  # chooses the long-tailed subset (separate from the training seed)
    subset: str = "shuffle"  # CIFAR-LT subset rule: "shuffle" (LDAM/CMO) or "first" (M2m)
    augment: str = "crop-flip"  # "crop-flip", "crop" (no flip: digits), "none"
    crop_padding: int = 4
    image_size: int = 224  # split-file data sets only
    num_workers: int = 4  # split-file data sets only
    decoder: str = "auto"  # split-file images: "auto" (TorchCodec or torchvision.io: faster per core), or "pil"
    verify_checksums: bool = False  # CIFAR: check the pickles' md5 sums (torchvision's) before unpickling
    # model and loss
    model: str = "resnet32"
    model_params: dict = field(default_factory=dict)
    loss: str = "ce"
    loss_params: dict = field(default_factory=dict)
    sampler: str = "instance"  # see ltkit.sampling.SAMPLER_KINDS
    sampler_params: dict = field(default_factory=dict)
    method: str = "none"  # a registered Method (CMO, ...)
    method_params: dict = field(default_factory=dict)
    # optimisation
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    warmup_epochs: int = 5
    schedule: str = "step"  # "step" or "cosine"
    milestones: list = field(default_factory=lambda: [160, 180])
    step_gamma: float = 0.01
    # evaluation and groups
    many: int = 100
    few: int = 20
    eval_every: int = 1  # test-set metrics every k epochs (and always at the last)
    max_steps: int | None = None  # stop after this many optimiser steps (a rehearsal); None: train every epoch
    max_test_images: int | None = None  # evaluate on this many test images (a fixed subset; a rehearsal); None: all
    # system
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    threads: int | None = None  # torch CPU threads (None: torch's default); 1 is fastest for tiny models
    amp: bool = True  # bf16 autocast on GPU
    cpu_amp: bool = False  # bf16 autocast on CPU too (with amp; fast on CPUs with AVX512-BF16 / AMX)
    channels_last: bool = True  # conv weights in NHWC (faster on CPU and GPU)
    compile: bool = False
    sync_bn: bool | None = None  # synchronised batch norm across processes; None: on when world size > 1
    # a finished run whose final weights this run evaluates instead of training: a post-hoc loss (``la-posthoc``)
    # trains exactly as the loss it adjusts (CE), so it reads that run's weights (same recipe, checked)
    weights_from: str | None = None
    # a finished run that trains exactly as this one until the epoch where this run's loss or method starts to
    # differ (a DRW switch, Syn-LT's start; checked): this run starts from that run's snapshot at that epoch
    # instead of repeating the epochs before it, and its record is the one training from scratch gives (tested).
    # Without the snapshot (the source's ``snapshot_epochs``) the run trains from scratch.
    continue_from: str | None = None
    snapshot_epochs: list = field(default_factory=list)  # keep the training state after these many epochs
    deterministic: bool = True
    progress: bool = True
    out_dir: str = "runs"
    name: str | None = None  # the run's folder in out_dir; default: <dataset>-<loss>[-<method>]-s<seed>
    label: str | None = None  # a human label for tables and plots ("BS + CMO"); default: the name
    if_exists: str = "error"  # "error", "resume", "overwrite"
    checkpoint_every: int = 1

    def run_name(self) -> str:
        method = "" if self.method == "none" else f"-{self.method}"
        return self.name or f"{self.dataset}-{self.loss}{method}-s{self.seed}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_defaults() -> dict[str, Any]:
    """The :class:`TrainConfig` fields that have a plain default, with it: a record written before a field
    existed is compared as if it had that default."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: the kit's bundled data set.
    # 100 epochs: fitted (benchmarks/epochs_sweep.py: at 30 epochs every model is under-fitted and CMO's
    # effect is inverted; from 100 on, train losses are ~0.02 and the effects match 200 epochs'); test metrics
    # every 10 epochs and a checkpoint every 25 (the final epoch always gets both).
    "digits-lt": dict(dataset="digits-lt", model="small-cnn", augment="crop", crop_padding=1, epochs=100,
                      batch_size=64, lr=0.05, weight_decay=5e-4, warmup_epochs=2, schedule="cosine", milestones=[],
                      eval_every=10, checkpoint_every=25, threads=1),
    # Digit glyphs composited on backgrounds (ltkit.context_digits): tail classes seen in few contexts.
    "context-digits-lt": dict(dataset="context-digits-lt", model="small-cnn", augment="crop", crop_padding=2,
                              epochs=100, batch_size=64, lr=0.05, weight_decay=5e-4, warmup_epochs=2,
                              schedule="cosine", milestones=[], eval_every=10, checkpoint_every=25, threads=1),
    # The LDAM / CMO schedule (see ../shared/notes/cmo-and-baselines.md).
    "cifar10-lt": dict(dataset="cifar10-lt", data_root="data", imbalance_factor=100, model="resnet32"),
    "cifar100-lt": dict(dataset="cifar100-lt", data_root="data", imbalance_factor=100, model="resnet32"),
    # Split-file data sets: ResNet-50 (CMO's ImageNet-LT setting: 100 epochs, ×0.1 at 60 and 80, batch 256).
    "imagenet-lt": dict(dataset="imagenet-lt", data_root="data/ImageNet_LT", model="resnet50", epochs=100,
                        batch_size=256, weight_decay=5e-4, warmup_epochs=0, milestones=[60, 80], step_gamma=0.1),
    # iNaturalist 2018: the notes and CMO's paper give no separate recipe; ltkit's choice is the ImageNet-LT one
    # above with weight decay 1e-4, as in the Balanced Softmax / RIDE iNaturalist configs.
    "inat2018": dict(dataset="inat2018", data_root="data/iNaturalist18", model="resnet50", epochs=100,
                     batch_size=256, weight_decay=1e-4, warmup_epochs=0, milestones=[60, 80], step_gamma=0.1),
    "places-lt": dict(dataset="places-lt", data_root="data/Places_LT", model="resnet50", epochs=30,
                      batch_size=256, lr=0.01, weight_decay=5e-4, warmup_epochs=0, schedule="cosine", milestones=[]),
}


def preset(preset_name: str = "digits-lt", /, **overrides: Any) -> TrainConfig:
    """A preset config with overrides: ``preset("cifar100-lt", loss="bs", epochs=10)``."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of: {', '.join(PRESETS)}.")
    return make_config(**{**PRESETS[preset_name], **overrides})


def make_config(**fields_: Any) -> TrainConfig:
    """A validated :class:`TrainConfig`: unknown fields, wrong types and bad values are one clear error."""
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(fields_) - set(known))
    if unknown:
        raise checks.InputError(f"unknown config field(s) {unknown}; valid fields: {', '.join(known)}.")
    config = TrainConfig(**fields_)
    validate(config)
    return config


_CHOICES = dict(decoder=ltdata.DECODERS, schedule=("step", "cosine"), augment=("crop-flip", "crop", "none"), device=("auto", "cpu", "cuda"),
                if_exists=runs.IF_EXISTS, subset=("shuffle", "first"))
_AT_LEAST_ONE = ("epochs", "batch_size", "eval_every", "checkpoint_every", "image_size")
_OPTIONAL_AT_LEAST_ONE = ("max_steps", "max_test_images")
_AT_LEAST_ZERO = ("warmup_epochs", "crop_padding", "num_workers", "seed", "data_seed", "many", "few")


def validate(config: TrainConfig) -> None:
    """Check every field's type and range before anything is written: one error naming the field and the fix."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not checks.type_ok(value, str(f.type)):
            raise checks.InputTypeError(f"config field {f.name!r} expects {f.type}, got {type(value).__name__} "
                                        f"{value!r}.")
    choices = dict(dataset=ltdata.DATASETS, model=models.MODEL_NAMES, loss=losses.LOSS_NAMES,
                   sampler=sampling.SAMPLER_KINDS, **_CHOICES)
    for name, valid in choices.items():
        checks.choice(name, getattr(config, name), valid)
    if config.method not in _METHODS:  # the methods wing is imported only for a method the engine does not know
        checks.choice("method", config.method, method_names())
    for name in _AT_LEAST_ONE:
        checks.integer(name, getattr(config, name), low=1)
    for name in _AT_LEAST_ZERO:
        checks.integer(name, getattr(config, name), low=0)
    checks.integer("seed", config.seed, low=0, high=2**63 - 1, hint="any integer in [0, 2**63)")
    if config.threads is not None:
        checks.integer("threads", config.threads, low=1, hint="None: torch's default")
    for name in _OPTIONAL_AT_LEAST_ONE:
        if getattr(config, name) is not None:
            checks.integer(name, getattr(config, name), low=1, hint="None: no limit")
    checks.real("lr", config.lr, low=0, low_open=True, hint="0.05 for the bundled sets, 0.1 for CIFAR-LT")
    checks.real("weight_decay", config.weight_decay, low=0)
    checks.real("momentum", config.momentum, low=0, high=1, high_open=True)
    checks.real("step_gamma", config.step_gamma, low=0, low_open=True, high=1)
    if config.imbalance_factor is not None:
        checks.real("imbalance_factor", config.imbalance_factor, low=1, hint="n_max / n_min; 1 is balanced")
    for i, milestone in enumerate(config.milestones):
        checks.integer(f"milestones[{i}]", milestone, low=0, hint="epochs at which the learning rate steps down")
    if config.name is not None:
        runs.check_run_name(config.name)
    if config.imbalance_factor is not None and config.dataset not in (*ltdata.BUNDLED, "cifar10-lt", "cifar100-lt"):
        raise checks.InputError(f"imbalance_factor applies to the bundled data sets and CIFAR-LT; {config.dataset!r} "
                                "has its own fixed split files: leave imbalance_factor=None.")
    if config.weights_from is not None and not losses.is_post_hoc(config.loss):
        raise checks.InputError(f"weights_from={config.weights_from!r} evaluates another run's weights, which only a "
                                f"post-hoc loss can reuse ({', '.join(losses.POST_HOC)}); loss={config.loss!r} "
                                "trains differently: leave weights_from=None.")
    for i, epoch in enumerate(config.snapshot_epochs):
        checks.integer(f"snapshot_epochs[{i}]", epoch, low=1, high=config.epochs - 1,
                       hint="epochs after which the training state is kept, for runs that continue from it")
    if config.continue_from is not None and config.weights_from is not None:
        raise checks.InputError("continue_from and weights_from are both set: a post-hoc run trains nothing, so it "
                                "continues nothing; leave continue_from=None.")
    if config.few > config.many:
        raise checks.InputError(f"few={config.few} > many={config.many}: the few-shot threshold must not exceed the "
                                "many-shot one (the papers use many=100, few=20).")
    _check_keys("loss_params", config.loss_params, losses.loss_params(config.loss), f"loss {config.loss!r}")
    _check_keys("model_params", config.model_params, models.model_params(config.model), f"model {config.model!r}")
    _check_keys("sampler_params", config.sampler_params, sampling.SAMPLER_PARAMS[config.sampler],
                f"sampler {config.sampler!r}")
    sampling.make_sampler([0, 1], [1, 1], config.sampler, total_epochs=config.epochs, **config.sampler_params)
    _check_in_channels(config)
    checks.build_params(method_class(config.method).Params, config.method_params, f"method {config.method!r}")


def _check_in_channels(config: TrainConfig) -> None:
    """A model_params in_channels that the bundled data cannot feed (known before any data is loaded)."""
    channels = {"digits-lt": 1, "context-digits-lt": 3, "cifar10-lt": 3, "cifar100-lt": 3}.get(config.dataset)
    asked = config.model_params.get("in_channels")
    if channels is not None and asked is not None and asked != channels:
        raise checks.InputError(f"model_params in_channels={asked} but {config.dataset} images have {channels} "
                                "channel(s): leave in_channels out (the engine fills it in) or set it to "
                                f"{channels}.")


def _check_keys(field_name: str, params: dict, accepted: Any, owner: str) -> None:
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise checks.InputError(f"{field_name} has unknown key(s) {unknown} for {owner}; accepted: "
                                f"{', '.join(sorted(accepted)) or 'none'}.")


# =========================================================================== methods
@dataclass
class Batch:
    """A training batch: images in [0, 1], labels, and an optional second label set."""

    x: Tensor
    y: Tensor
    index: Tensor | None = None  # positions in ctx.train_x (None for synthetic rows)
    y2: Tensor | None = None  # second labels (mixing methods)
    lam: float = 1.0  # weight of y; y2 gets 1 - lam
    step: int = 0  # the optimiser step within the epoch
    global_size: int = 0  # images in this step's global batch (all ranks together; 0: unknown)
    global_index: Tensor | None = None  # the training-set positions of the whole global batch (tensor data)
    # images of the global batch at the given positions within it, augmented as the engine augments them there
    # (tensor data): lets a method pair an image with any image of the global batch, on any number of ranks
    global_images: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NoParams:
    """The parameters of a method that takes none."""


class Method:
    """No-op hooks; see the module docstring.  Subclass and register.

    A method declares its parameters once, as a frozen dataclass ``Params``
    whose fields carry their valid ranges (:func:`ltkit.checks.param`); the
    base class checks ``config.method_params`` against it (unknown names,
    types, ranges: one clear error naming the parameter) and stores the result
    as ``self.params``.
    """

    name = "none"
    Params: type = NoParams

    def __init__(self, **params: Any) -> None:
        self.params = checks.build_params(self.Params, params, f"method {self.name!r}")

    def setup(self, ctx: "Context") -> None: ...

    def epoch_start(self, ctx: "Context", epoch: int) -> None: ...

    def epoch_end(self, ctx: "Context", epoch: int) -> None: ...

    def batch(self, ctx: "Context", batch: Batch) -> Batch:
        return batch

    def loss(self, ctx: "Context", batch: Batch) -> Tensor | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def inert_until(self, config: "TrainConfig") -> float:
        """The first epoch in which this method changes training (0: from the start; ``TrainConfig.continue_from``
        continues a run without the method up to it).  A method that acts later overrides this."""
        return 0


_METHODS: dict[str, type[Method]] = {"none": Method}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a :class:`Method` available by its ``name``."""
    _METHODS[cls.name] = cls
    return cls


def _load_methods() -> None:
    """Import :mod:`ltkit.methods`, whose modules register the kit's methods (once; cheap afterwards)."""
    importlib.import_module("ltkit.methods")


def method_names() -> list[str]:
    _load_methods()
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    """The registered :class:`Method` subclass called ``name``."""
    if name not in _METHODS:
        _load_methods()
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}.")
    return _METHODS[name]


def make_method(name: str, params: dict) -> Method:
    return method_class(name)(**params)


# =========================================================================== distributed
def init_distributed(device_kind: str) -> tuple[int, int, int]:
    """Initialise torch.distributed when launched by torchrun; returns (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def all_reduce_sum(tensor: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# =========================================================================== context
@dataclass
class Context:
    """What hooks see: the run's objects, the device-resident data, the distributed layout."""

    config: TrainConfig
    data: Any  # ltkit.data.TensorData or FileData
    class_counts: list[int]
    model: nn.Module  # the (possibly DDP-wrapped) model being trained
    loss_fn: losses.LTLoss
    optimizer: torch.optim.Optimizer | None  # None during Method.setup (built right after it)
    device: torch.device
    rank: int = 0
    world_size: int = 1
    train_x: Tensor | None = None  # uint8 images on the device (tensor data sets)
    train_y: Tensor | None = None
    test_x: Tensor | None = None  # this rank's test shard on the device (filled at the first evaluation)
    test_y: Tensor | None = None
    epoch: int = 0
    run_dir: Path | None = None  # where the run record is written

    @property
    def base_model(self) -> nn.Module:
        """The model without its DDP / compile wrappers (for ``features`` and ``head``)."""
        model = self.model
        model = getattr(model, "module", model)
        return getattr(model, "_orig_mod", model)

    def autocast(self):
        enabled = self.config.amp and (self.device.type == "cuda" or self.config.cpu_amp)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def mixed_loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """``lam·L(logits, y) + (1 - lam)·L(logits, y2)`` (just ``L(logits, y)`` without y2), over the global batch."""
        logits = logits.float()
        value = self.loss(self.loss_fn, logits, batch.y)
        if batch.y2 is not None and batch.lam < 1:
            value = batch.lam * value + (1 - batch.lam) * self.loss(self.loss_fn, logits, batch.y2)
        return value

    def loss(self, loss_fn: losses.LTLoss, logits: Tensor, targets: Tensor) -> Tensor:
        """``loss_fn`` as the mean over the *global* batch, whatever this rank's share (see :meth:`reduce`)."""
        return self.reduce(*loss_fn.reduction_parts(logits.float(), targets))

    def reduce(self, numerator: Tensor, denominator: Tensor) -> Tensor:
        """This rank's part of ``sum_r numerator_r / sum_r denominator_r``, scaled for DDP's gradient average.

        One process: ``numerator / denominator``.  ``W`` processes: the denominators
        are all-reduced (one small all-reduce per step) and the value is multiplied
        by ``W``, because DDP averages the ranks' gradients: the update is then the
        single-process one on the global batch, for weighted losses too (a
        class-weighted mean divides by the global batch's sum of weights).
        """
        if self.world_size == 1:
            return numerator / denominator
        total = all_reduce_sum(denominator.detach().clone())
        return numerator * self.world_size / total

    # ------------------------------------------------------------------ services for methods
    def generator(self, *stream: int | str) -> torch.Generator:
        """A CPU generator for one random stream of this run (:func:`stream_seed`), e.g. ``("cmo-fg", epoch, step)``.

        Key a draw by global positions (epoch, step), not by rank, and take
        :meth:`local` of the result: then the run is the same on any number of processes.
        """
        return torch.Generator().manual_seed(stream_seed(self.config.seed, *stream))

    def rng(self, *stream: int | str) -> np.random.Generator:
        """A NumPy generator for one random stream of this run (the same recipe as :meth:`generator`)."""
        return np.random.default_rng(stream_seed(self.config.seed, *stream))

    def local(self, global_items: Tensor) -> Tensor:
        """This rank's share of a tensor with one row per item of a global batch (as the engine shards batches)."""
        return local_part(global_items, self.rank, self.world_size)

    def permutation(self, n: int, *stream: int | str) -> Tensor:
        """A permutation of ``range(n)`` from one random stream (the same on every rank)."""
        return torch.randperm(n, generator=self.generator(*stream))

    def images(self, positions: Tensor, generator: torch.Generator | None, *, source: Any = None,
               at: Tensor | None = None) -> Tensor:
        """This rank's share of the images at global ``positions``, as float images in [0, 1] on the device.

        ``source``: the training images (default), another ``uint8`` tensor (e.g. a
        synthetic set) or a map-style data set of files.  Augmented like the
        engine's batches with draws from ``generator`` for every global position
        (``None``: not augmented), so the result does not depend on the world size.
        ``at``: the indices into ``positions`` to return instead of this rank's share
        (e.g. another rank's rows, augmented exactly as that rank gets them).
        """
        source = self.train_x if source is None else source
        positions = positions.cpu()
        mine = self.local(torch.arange(len(positions))) if at is None else at.cpu()
        if isinstance(source, Tensor):
            x = to_unit_float(source[positions[mine].to(source.device)].to(self.device))
            augment = None if generator is None else _augmentation(self, len(positions), generator)
            if augment is not None:
                x = apply_augmentation(x, self.config.crop_padding, *(a if a is None else a[mine.to(self.device)]
                                                                      for a in augment))
            return x
        seeds = torch.randint(2**62, (len(positions),), generator=generator) if generator is not None \
            else torch.zeros(len(positions), dtype=torch.int64)
        items = SeededItems(source)
        return torch.stack([items[int(seeds[i]), int(positions[i])][0] for i in mine]).to(self.device)

    @torch.no_grad()
    def features(self, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
        """Eval-mode features of the un-augmented training images (data-set order) and their labels, on the CPU."""
        model = self.base_model
        was_training = model.training
        model.eval()
        chunks = []
        if self.train_x is not None:
            for start in range(0, len(self.train_x), batch_size):
                with self.autocast():
                    chunks.append(model.features(to_unit_float(self.train_x[start:start + batch_size])).float().cpu())
            labels = self.train_y.cpu()
        else:
            dataset = self.data.train
            dataset.transform = file_transforms(self.config, train=False)
            dataset.decoder = ltdata.resolve_decoder(self.config.decoder)
            keys = [[(0, i) for i in range(start, min(start + batch_size, len(dataset)))]
                    for start in range(0, len(dataset), batch_size)]
            for x, _ in _keyed_loader(self, dataset, keys):
                with self.autocast():
                    chunks.append(model.features(x.to(self.device)).float().cpu())
            labels = torch.as_tensor(dataset.targets)
        model.train(was_training)
        return torch.cat(chunks), labels

    def file_transform(self, train: bool):
        """The run's torchvision transform for split-file images (:func:`file_transforms`)."""
        return file_transforms(self.config, train)

    def progress(self, iterable: Any, total: int, desc: str):
        """A tqdm bar on rank 0 when the run shows progress (else the iterable itself)."""
        return progress_bar(iterable, total, desc, self.config.progress and self.rank == 0)


# =========================================================================== data on the device
def to_unit_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def augment_batch(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding (per image) and random horizontal flip, on the whole batch.

    Equivalent to torchvision's ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip``
    applied image by image, but one gather for the batch on its device.
    """
    return apply_augmentation(x, padding, *draw_augmentation(len(x), padding, flip, generator, x.device))


def draw_augmentation(n: int, padding: int, flip: bool, generator: torch.Generator,
                      device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
    """Crop offsets ``dy, dx`` in [0, 2·padding] and flip flags for ``n`` images (drawn on the CPU, moved once)."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else None
    return dy.to(device), dx.to(device), None if flips is None else flips.to(device)


def apply_augmentation(x: Tensor, padding: int, dy: Tensor, dx: Tensor, flips: Tensor | None) -> Tensor:
    """Crop each zero-padded image at its offset, then mirror the flagged ones (one gather)."""
    n, channels, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # n,1,h,1
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # n,1,1,w
        batch_idx = torch.arange(n, device=x.device)[:, None, None, None]
        chan_idx = torch.arange(channels, device=x.device)[None, :, None, None]
        x = padded[batch_idx, chan_idx, rows, cols]
    if flips is not None:
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    return x


def stream_seed(seed: int, *stream: int | str) -> int:
    """The one recipe for every random stream of a run: a 63-bit seed from ``(seed, *stream)``.

    ``stream`` names the purpose and the position, e.g. ``("order", epoch)``,
    ``("augment", epoch)`` or ``("cmo-box", epoch, step)``; strings are hashed
    (CRC-32), and NumPy's ``SeedSequence`` mixes the words, so nearby keys give
    unrelated streams.  The engine and every method draw through it (see
    :meth:`Context.generator`), so a run is reproducible from its seed alone.
    """
    words = [zlib.crc32(part.encode()) if isinstance(part, str) else int(part) for part in (seed, *stream)]
    if min(words) < 0:
        raise ValueError(f"random stream keys must be non-negative, got {(seed, *stream)}.")
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def epoch_order(config: TrainConfig, labels: Tensor, counts: list[int], epoch: int) -> Tensor:
    """The epoch's global sample order (``N`` positions; the same for any number of processes).

    ``instance``: a permutation; another sampler: ``N`` draws with replacement
    from its per-sample weights (:func:`ltkit.sampling.make_sampler`).
    """
    n = len(labels)
    generator = torch.Generator().manual_seed(stream_seed(config.seed, "order", epoch))
    if config.sampler == "instance":
        return torch.randperm(n, generator=generator)
    weights = sampling.make_sampler(labels, counts, config.sampler, epoch=epoch, total_epochs=config.epochs,
                                    **config.sampler_params).weights
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def global_batches(n: int, batch_size: int) -> list[slice]:
    """The epoch's global batches as slices of its order (the last may be short)."""
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def local_part(global_positions: Tensor, rank: int, world: int) -> Tensor:
    """This rank's share of a global batch: every ``world``-th item from ``rank``.

    A global batch shorter than ``world`` (a tiny last batch) wraps around so
    that every rank has at least one image.
    """
    if len(global_positions) < world:
        global_positions = global_positions.repeat(math.ceil(world / len(global_positions)))[:world]
    return global_positions[rank::world]


def tensor_batches(ctx: Context, epoch: int) -> Iterator[Batch]:
    """One epoch of this rank's batches from the device-resident tensors.

    The global order and the augmentation of every position are drawn once per
    epoch (the same on every rank, for any world size) and moved to the device
    once; each rank takes its share of every global batch (:func:`local_part`).
    """
    config = ctx.config
    order = epoch_order(config, ctx.train_y.cpu(), ctx.class_counts, epoch).to(ctx.device)
    augment = _augmentation(ctx, len(order), ctx.generator("augment", epoch))
    positions = torch.arange(len(order), device=ctx.device)

    def images_at(at: Tensor) -> Tensor:  # the augmented images at epoch positions ``at``
        x = to_unit_float(ctx.train_x[order[at]])
        return x if augment is None else apply_augmentation(x, config.crop_padding,
                                                            *(a if a is None else a[at] for a in augment))

    for step, part in enumerate(global_batches(len(order), config.batch_size)):
        mine = local_part(positions[part], ctx.rank, ctx.world_size)
        idx = order[mine]
        yield Batch(x=images_at(mine), y=ctx.train_y[idx], index=idx, step=step, global_size=part.stop - part.start,
                    global_index=order[part],
                    global_images=lambda within, part=part: images_at(positions[part][within.to(ctx.device)]))


def _augmentation(ctx: Context, n: int, generator: torch.Generator) -> tuple | None:
    """Crop offsets and flips for ``n`` global positions (``None`` without augmentation)."""
    if ctx.config.augment == "none":
        return None
    return draw_augmentation(n, ctx.config.crop_padding, ctx.config.augment == "crop-flip", generator, ctx.device)


def file_transforms(config: TrainConfig, train: bool):
    """The torchvision v2 pipeline of a split-file data set: random-resized crop + flip, or resize + centre crop."""
    from torchvision.transforms import v2

    size = config.image_size
    ops = ([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if train and config.augment != "none"
           else [v2.Resize(int(size * 256 / 224), antialias=True), v2.CenterCrop(size)])
    return v2.Compose([v2.ToImage(), *ops, v2.ToDtype(torch.float32, scale=True)])


class SeededItems(torch.utils.data.Dataset):
    """A data set read by ``(seed, index)`` keys: each item's random transforms are seeded by its key.

    So an image's augmentation depends on the run's seed, the epoch and its global
    position only: distinct per sample, the same for any number of processes or
    DataLoader workers, and replayed exactly on resume.
    """

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        seed, index = key
        if torch.utils.data.get_worker_info() is not None:  # a worker process: its global RNG is ours to set
            torch.manual_seed(seed)
            return self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def _keyed_loader(ctx: Context, dataset, batches: list[list[tuple[int, int]]]) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(SeededItems(dataset), batch_sampler=batches, num_workers=ctx.config.num_workers,
                                       pin_memory=ctx.device.type == "cuda", persistent_workers=False)


def file_batches(ctx: Context, epoch: int) -> Iterator[Batch]:
    """One epoch of this rank's batches of a split-file data set (DataLoader workers, per-sample seeds)."""
    dataset = ctx.data.train
    dataset.transform = file_transforms(ctx.config, train=True)
    dataset.decoder = ltdata.resolve_decoder(ctx.config.decoder)
    order = epoch_order(ctx.config, torch.tensor(dataset.targets), ctx.class_counts, epoch)
    positions = torch.arange(len(order))
    parts = global_batches(len(order), ctx.config.batch_size)
    keys = [[(stream_seed(ctx.config.seed, "augment", epoch, int(p)), int(order[p]))
             for p in local_part(positions[part], ctx.rank, ctx.world_size)] for part in parts]
    for step, ((x, y), part) in enumerate(zip(_keyed_loader(ctx, dataset, keys), parts)):
        yield Batch(x=x.to(ctx.device, non_blocking=True), y=y.to(ctx.device, non_blocking=True),
                    step=step, global_size=part.stop - part.start)


# =========================================================================== evaluation
@torch.no_grad()
def evaluate_test_set(ctx: Context) -> dict:
    """Final-style evaluation on the full test set (sharded over ranks, confusion all-reduced)."""
    model = ctx.model
    model.eval()
    confusion = torch.zeros(ctx.data.num_classes, ctx.data.num_classes, dtype=torch.int64, device=ctx.device)
    for x, y in _test_batches(ctx):
        with ctx.autocast():
            logits = model(_memory_format(ctx, x))
        predictions = ctx.loss_fn.predict_logits(logits.float()).argmax(1)
        confusion += metrics.confusion_matrix(y, predictions, ctx.data.num_classes)
    all_reduce_sum(confusion)
    model.train()
    result = metrics.evaluate(confusion.cpu(), ctx.class_counts, ctx.config.many, ctx.config.few)
    result["confusion"] = confusion.cpu().tolist()
    result["test_images"] = int(confusion.sum())
    return result


def test_positions(config: TrainConfig, n: int, rank: int = 0, world: int = 1) -> Tensor:
    """This rank's test images: every ``world``-th of all ``n``, or of a fixed random subset of ``max_test_images``."""
    positions = torch.arange(n)
    if config.max_test_images is not None and config.max_test_images < n:
        positions = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:config.max_test_images].sort().values
    return positions[rank::world]


def _test_batches(ctx: Context) -> Iterator[tuple[Tensor, Tensor]]:
    if isinstance(ctx.data, ltdata.TensorData):
        if ctx.test_x is None:  # this rank's shard of the test set, moved to the device once
            positions = test_positions(ctx.config, len(ctx.data.y_test), ctx.rank, ctx.world_size)
            ctx.test_x, ctx.test_y = ctx.data.x_test[positions].to(ctx.device), ctx.data.y_test[positions].to(ctx.device)
        for start in range(0, len(ctx.test_y), 1024):
            yield to_unit_float(ctx.test_x[start:start + 1024]), ctx.test_y[start:start + 1024]
        return
    dataset = ctx.data.test
    dataset.transform = file_transforms(ctx.config, train=False)
    dataset.decoder = ltdata.resolve_decoder(ctx.config.decoder)
    mine = test_positions(ctx.config, len(dataset), ctx.rank, ctx.world_size).tolist()
    step = ctx.config.batch_size
    keys = [[(0, i) for i in mine[start:start + step]] for start in range(0, len(mine), step)]
    for x, y in _keyed_loader(ctx, dataset, keys):
        yield x.to(ctx.device), y.to(ctx.device)


def _memory_format(ctx: Context, x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if ctx.config.channels_last and ctx.device.type == "cuda" else x


# =========================================================================== schedule
def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Linear warm-up, then step decay (``step_gamma`` per milestone passed) or cosine."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    if config.schedule == "step":
        return config.lr * config.step_gamma ** sum(epoch >= m for m in config.milestones)
    progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


# =========================================================================== building
def resolve_device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise checks.InputError("device='cuda' but no CUDA GPU is visible; use device='auto' or 'cpu'.")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def load_data(config: TrainConfig):
    kwargs: dict[str, Any] = {}
    if config.imbalance_factor is not None:
        kwargs["imbalance_factor"] = config.imbalance_factor
    if config.dataset in ltdata.BUNDLED:
        return ltdata.load_bundled(config.dataset, seed=config.data_seed, **kwargs)
    if config.dataset in ("cifar10-lt", "cifar100-lt"):
        kwargs.update(subset=config.subset, seed=config.data_seed, verify_checksums=config.verify_checksums)
    return ltdata.load_dataset(config.dataset, root=config.data_root, **kwargs)


def build_model(config: TrainConfig, data, loss_fn: losses.LTLoss) -> nn.Module:
    params = dict(config.model_params)
    params.setdefault("cosine_head", loss_fn.needs_cosine_head)
    if isinstance(data, ltdata.TensorData):
        channels, size, _ = data.image_shape
        params.setdefault("in_channels", channels)
        params.setdefault("image_size", size)
    model = models.make_model(config.model, data.num_classes, **params)
    # channels_last: ~20 % faster convolutions on CPU (oneDNN) and on GPU tensor cores; the results differ from the
    # default layout only by float summation order
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def _set_determinism(config: TrainConfig) -> None:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def progress_bar(iterable: Any, total: int, desc: str, enabled: bool = True):
    """``tqdm.auto`` over ``iterable`` when ``enabled`` (notebook or terminal bar), else the iterable."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


# =========================================================================== fit
def fit(config: TrainConfig | str = "digits-lt", /, *, data: Any = None, **overrides: Any) -> dict:
    """Train and evaluate; returns the run record (see :func:`ltkit.runs.load_run`).

    ``config`` is a :class:`TrainConfig` or a preset name; keyword overrides
    are applied on top (``fit("digits-lt", loss="bs", seed=2)``).  ``data``
    (a :class:`ltkit.data.TensorData` or ``FileData``) replaces the data set
    the config names, e.g. your own tensors or random data for a benchmark;
    its ``info`` is stored in the run record.
    """
    if isinstance(config, str):
        config = preset(config, **overrides)
    elif overrides:
        config = make_config(**{**config.to_dict(), **overrides})
    else:
        validate(config)
    threads = torch.get_num_threads()
    try:
        return _fit(config, data)
    finally:
        torch.set_num_threads(threads)  # ``config.threads`` applies to this run only


def _fit(config: TrainConfig, data: Any) -> dict:
    kind = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    rank, world, local_rank = init_distributed(kind)
    device = resolve_device(config, local_rank)
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} is the global batch: it must be divisible by the {world} processes.")
    source = _weights_source(config, world) if config.weights_from is not None else None  # before writing
    snapshot = continuation(config) if config.continue_from is not None else None
    run_dir = runs.run_path(config.out_dir, config.run_name())
    status = _prepare(run_dir, config, rank)
    if status == "finished":
        return runs.load_run(run_dir)
    try:
        if source is not None:
            return _evaluate_weights_from(config, source, data, run_dir, device)
        return _train_run(config, data, run_dir, status, device, rank, world, local_rank,
                          snapshot if status == "new" else None)
    finally:
        if rank == 0:
            runs.release_run_dir(run_dir)  # the lock taken by _prepare, also when training failed


def _train_run(config: TrainConfig, data: Any, run_dir: Path, status: str, device: torch.device, rank: int,
               world: int, local_rank: int, snapshot: Snapshot | None = None) -> dict:
    """Build everything, train the remaining epochs, evaluate, write the record (the run directory is held)."""
    _set_determinism(config)
    data = load_data(config) if data is None else data
    counts = data.class_counts
    loss_fn = losses.make_loss(config.loss, counts, **config.loss_params).to(device)
    loss_fn.check_targets = False  # the labels are checked once, below
    torch.manual_seed(config.seed)
    model = build_model(config, data, loss_fn).to(device)
    method = make_method(config.method, dict(config.method_params))
    ctx = Context(config, data, counts, model, loss_fn, None, device, rank, world, run_dir=run_dir)
    if isinstance(data, ltdata.TensorData):
        ctx.train_x, ctx.train_y = data.x_train.to(device), data.y_train.to(device)
        for part, y in (("training", data.y_train), ("test", data.y_test)):  # before the first epoch, not at eval
            outside = torch.nonzero((y < 0) | (y >= data.num_classes)).flatten()
            if len(outside):
                i = int(outside[0])
                raise checks.InputError(f"{part} label {int(y[i])} (index {i}, {len(outside)} such labels) is outside "
                                        f"[0, {data.num_classes}): relabel the {part} set or set the number of classes.")
    method.setup(ctx)  # may wrap the model or add modules to it: the optimiser is built afterwards
    ctx.model = ctx.model.to(device)
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay, nesterov=config.nesterov)
    start_epoch, history = 0, []
    if status == "resume":
        start_epoch = _restore(run_dir / "checkpoint.pt", ctx, method)
        if rank == 0:
            runs.truncate_history(run_dir, start_epoch - 1)
    elif snapshot is not None:
        start_epoch = _continue(snapshot, ctx)
    sync_bn = use_sync_bn(config, ctx.model, world)
    if sync_bn:
        ctx.model = convert_sync_bn(ctx.model, device)
    model = ctx.model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    ctx.model = model
    env = {**runs.environment(device, world), **distributed_facts(device, world, sync_bn, config.decoder)}
    if snapshot is not None:
        env["continued_from"] = dict(run=str(snapshot.run.resolve()), epoch=snapshot.epoch)
    if rank == 0:
        runs.write_json(run_dir / "config.json", dict(config=config.to_dict(), env=env, class_counts=counts,
                                                      classes=data.classes, data_info=getattr(data, "info", {})))
    return _train_epochs(ctx, method, start_epoch, history)


# ------------------------------------------------------------------ post-hoc runs: another run's weights, evaluated
# fields in which a post-hoc run may differ from the run whose weights it evaluates
_POST_HOC_FREE = {"loss", "loss_params", "name", "label", "weights_from", "out_dir", *runs.VOLATILE_FIELDS}
_EVALUATED = ("overall", "many", "medium", "few", "worst", "eval_s")


def _source_config(record: dict, config: TrainConfig, free: set[str]) -> tuple[dict, list[str]]:
    """Another run's config (a field it lacks at its default) and the fields outside ``free`` where it differs."""
    stored = {**config_defaults(), **record["config"]}
    return stored, runs.config_differences(stored, config.to_dict(), free)


def _weights_source(config: TrainConfig, world: int) -> dict:
    """The record of ``config.weights_from``, checked: finished, and trained with this run's recipe by a loss
    that trains as this run's loss does (so its weights *are* this run's weights); one-line errors otherwise."""
    source = Path(config.weights_from)
    if world > 1:
        raise checks.InputError("weights_from evaluates on one process: run it without torchrun.")
    if not (source / "result.json").is_file():
        raise checks.InputError(f"weights_from={str(source)!r} is not a finished run (no result.json): train it first.")
    record = runs.load_run(source)
    stored, differing = _source_config(record, config, _POST_HOC_FREE)
    if differing or losses.trains_as(stored["loss"]) != losses.trains_as(config.loss):
        why = f"its config differs in {differing}" if differing else f"its loss {stored['loss']!r} trains differently"
        raise checks.InputError(f"weights_from={str(source)!r}: {why}; a post-hoc run reuses the weights of the "
                                "same training only. Point it at a run of the same recipe, or train this one.")
    return record


def _evaluate_weights_from(config: TrainConfig, record: dict, data: Any, run_dir: Path, device: torch.device) -> dict:
    """A post-hoc run: the final weights of ``config.weights_from`` (checked by :func:`_weights_source`),
    evaluated with this run's prediction rule; nothing is trained.  The record keeps the source's training
    history (train loss, timings) and this run's final evaluation.
    """
    source = Path(config.weights_from)
    trained = load_trained(source, data)
    ctx = trained.context
    ctx.device, ctx.model = device, trained.model.to(device)
    ctx.loss_fn = losses.make_loss(config.loss, trained.data.class_counts, **config.loss_params).to(device)
    ctx.config = config
    result = evaluate_test_set(ctx)
    state = runs.load_checkpoint(source / "checkpoint.pt", map_location="cpu")
    runs.save_checkpoint(run_dir / "checkpoint.pt", {**state, "loss": ctx.loss_fn.state_dict(),
                                                      "config": config.to_dict()})
    history = [{k: v for k, v in row.items() if k not in _EVALUATED} for row in record["history"]]
    history[-1].update({k: result[k] for k in _EVALUATED[:-1]})
    for row in history:
        runs.append_history(run_dir, row)
    env = {**runs.environment(device, 1), "weights_from": str(source.resolve())}
    runs.write_json(run_dir / "config.json", dict(config=config.to_dict(), env=env,
                                                  class_counts=trained.data.class_counts, classes=trained.data.classes,
                                                  data_info=getattr(trained.data, "info", {})))
    kept = ("epochs", "final_epoch", "world_size", "stopped_at_step")
    result.update({k: record["result"][k] for k in kept if k in record["result"]},
                  class_counts=trained.data.class_counts, wall_time_s=record["result"].get("wall_time_s"))
    runs.write_json(run_dir / "result.json", result)
    return runs.load_run(run_dir)


# ------------------------------------------------------------------ continuing another run's shared epochs
# fields in which a continued run may differ from its source (the loss and the method only where checked)
_CONTINUE_FREE = {"loss", "loss_params", "method", "method_params", *_POST_HOC_FREE}


@dataclass(frozen=True)
class Snapshot:
    """Another run's training state after ``epoch`` epochs, which a continued run starts from."""

    run: Path
    epoch: int
    history: list[dict]  # the source's history rows of epochs 0 .. epoch - 1

    @property
    def path(self) -> Path:
        return snapshot_path(self.run, self.epoch)


def snapshot_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    """Where a run keeps its training state after ``epoch`` epochs (``TrainConfig.snapshot_epochs``)."""
    return Path(run_dir) / f"snapshot-{epoch:04d}.pt"


def continuation(config: TrainConfig) -> Snapshot | None:
    """The snapshot of ``config.continue_from`` this run starts from, or None (no snapshot kept at the epoch
    where the two runs part: the run trains from scratch, with the same result).

    Checked before anything is written (one-line errors): the source is finished; its config equals this one
    except for the loss, the method and bookkeeping fields; and the epochs before the parting epoch train
    identically — the losses are equal or this run's is a deferred switch (DRW) of the source's
    (:func:`ltkit.losses.deferred`), the methods are equal or the source has none and this run's changes
    nothing before an epoch it names (:meth:`Method.inert_until`, e.g. Syn-LT's ``start_epoch``).
    """
    source = Path(config.continue_from)
    if not (source / "result.json").is_file():
        raise checks.InputError(f"continue_from={str(source)!r} is not a finished run (no result.json): train it "
                                "first, or leave continue_from=None.")
    record = runs.load_run(source)
    stored, differing = _source_config(record, config, _CONTINUE_FREE)
    if differing:
        raise checks.InputError(f"continue_from={str(source)!r}: its config differs in {differing}, so no epoch of "
                                "it is shared with this run: point it at a run of the same recipe.")
    epoch = min(_loss_parts_at(stored, config, record["result"]["class_counts"]), _method_parts_at(stored, config))
    if not 0 < epoch < config.epochs:
        when = "from the first epoch" if epoch <= 0 else "never (it is the same run: reuse it)"
        raise checks.InputError(f"continue_from={str(source)!r}: the two runs part {when}; continue only from a run "
                                "whose loss or method this run changes later (a DRW switch, Syn-LT's start).")
    if not snapshot_path(source, epoch).is_file():
        return None
    return Snapshot(source, epoch, [row for row in record["history"] if row["epoch"] < epoch])


def _loss_parts_at(stored: dict, config: TrainConfig, counts: list[int]) -> float:
    """The first epoch the two losses train differently (inf: never)."""
    if (stored["loss"], stored["loss_params"]) == (config.loss, config.loss_params):
        return math.inf
    switch = losses.deferred(config.loss, counts, config.loss_params)
    if switch is not None and (switch.before, switch.before_params) == (stored["loss"], stored["loss_params"]):
        return switch.epoch
    return 0


def _method_parts_at(stored: dict, config: TrainConfig) -> float:
    """The first epoch the two methods train differently (inf: never)."""
    if (stored["method"], stored["method_params"]) == (config.method, config.method_params):
        return math.inf
    if stored["method"] != "none":
        return 0
    return make_method(config.method, dict(config.method_params)).inert_until(config)


def _continue(snapshot: Snapshot, ctx: Context) -> int:
    """Start from ``snapshot``: the source's weights and optimiser state (this run's loss and method start
    fresh: they have done nothing different so far) and its history rows; the epoch to train next."""
    _load_state(snapshot.path, ctx, None, "snapshot", "; leave continue_from=None to train from scratch.")
    if ctx.rank == 0:
        for row in snapshot.history:
            runs.append_history(ctx.run_dir, row)
    return snapshot.epoch


# =========================================================================== batch norm and facts
def use_sync_bn(config: TrainConfig, model: nn.Module, world: int) -> bool:
    """``config.sync_bn``, or (``None``) whether the model has batch norm and more than one process trains it."""
    if config.sync_bn is not None:
        return config.sync_bn and world > 1
    return world > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Synchronised batch norm for CPU processes (gloo), which torch's SyncBatchNorm refuses: global batch
    statistics from one differentiable all-reduce of per-channel sums (``torch.distributed.nn``)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        totals = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        channels = x.shape[1]
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), self.momentum)
        shape = (1, channels, *([1] * (x.dim() - 2)))
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every batch norm of ``model`` synchronised over the processes (torch's SyncBatchNorm on GPUs)."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cpu":
        for module in model.modules():
            if type(module) is nn.SyncBatchNorm:
                module.__class__ = _GlobalBatchNorm
    return model


def distributed_facts(device: torch.device, world: int, sync_bn: bool, config_decoder: str = "auto") -> dict:
    """What a researcher checks first on a cluster: nodes, hosts, GPU, NCCL / cuDNN versions, sync_bn."""
    hosts = [socket.gethostname()]
    if world > 1 and dist.is_initialized():
        gathered: list = [None] * world
        dist.all_gather_object(gathered, hosts[0])
        hosts = gathered
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    facts = dict(nodes=max(1, world // max(local_world, 1)), hostnames=sorted(set(hosts)), sync_bn=sync_bn,
                 image_decoder=ltdata.resolve_decoder(config_decoder),
                 cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
                 nccl=".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else None,
                 gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    return facts


# =========================================================================== run folders and the epoch loop
def _prepare(run_dir: Path, config: TrainConfig, rank: int) -> str:
    """Rank 0 decides (and creates the folder); the others follow its decision."""
    status = runs.prepare_run_dir(run_dir, config.to_dict(), config.if_exists, config_defaults()) if rank == 0 else ""
    if dist.is_available() and dist.is_initialized():
        box = [status]
        dist.broadcast_object_list(box, src=0)
        status = box[0]
    return status


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _train_epochs(ctx: Context, method: Method, start_epoch: int, history: list[dict]) -> dict:
    """The epoch loop: train, evaluate when due, append history, checkpoint; then the final result."""
    config, rank, run_dir = ctx.config, ctx.rank, ctx.run_dir
    started = time.time()
    result = None
    epochs = range(start_epoch, config.epochs)
    for epoch in progress_bar(epochs, len(epochs), config.run_name(), config.progress and rank == 0):
        row = _train_epoch(ctx, method, epoch)
        last = epoch == config.epochs - 1 or row.get("stopped_at_step") is not None
        if last or (epoch + 1) % config.eval_every == 0:
            evaluated = time.perf_counter()
            result = evaluate_test_set(ctx)
            row.update({k: result[k] for k in ("overall", "many", "medium", "few", "worst")},
                       eval_s=round(time.perf_counter() - evaluated, 4))
        history.append(row)
        if rank == 0:
            runs.append_history(run_dir, row)
            if last or (epoch + 1) % config.checkpoint_every == 0:
                _checkpoint(run_dir / "checkpoint.pt", ctx, method, epoch)
            if epoch + 1 in config.snapshot_epochs:
                _checkpoint(snapshot_path(run_dir, epoch + 1), ctx, method, epoch)
        if last:
            break
    if result is None:  # nothing left to train (resumed after the last epoch was checkpointed)
        result = evaluate_test_set(ctx)
    final = history[-1]["epoch"] if history else config.epochs - 1
    result.update(class_counts=ctx.class_counts, epochs=config.epochs, final_epoch=final,
                  wall_time_s=round(time.time() - started, 3), world_size=ctx.world_size)
    if history and history[-1].get("stopped_at_step") is not None:
        result["stopped_at_step"] = history[-1]["stopped_at_step"]  # a rehearsal (max_steps): not a final result
    if rank == 0:
        runs.write_json(run_dir / "result.json", result)
    _barrier()
    return runs.load_run(run_dir)


def _train_epoch(ctx: Context, method: Method, epoch: int) -> dict:
    """One epoch of optimiser steps (fewer when ``max_steps`` ends the run in it); its history row."""
    config = ctx.config
    ctx.epoch = epoch
    lr = learning_rate(config, epoch)
    for group in ctx.optimizer.param_groups:
        group["lr"] = lr
    ctx.loss_fn.set_epoch(epoch)
    method.epoch_start(ctx, epoch)
    ctx.model.train()
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    sums = torch.zeros(3, device=ctx.device, dtype=torch.float64)  # loss x global images, global images, images here
    batches = tensor_batches(ctx, epoch) if ctx.train_x is not None else file_batches(ctx, epoch)
    steps_per_epoch = math.ceil(_train_size(ctx) / config.batch_size)
    stop = None if config.max_steps is None else config.max_steps - epoch * steps_per_epoch
    started, data_wait, step = time.perf_counter(), 0.0, 0
    while stop is None or step < stop:
        waited = time.perf_counter()
        batch = next(batches, None)
        data_wait += time.perf_counter() - waited
        if batch is None:
            break
        value, images = _step(ctx, method, batch)
        step += 1
        # this rank's part of (global loss x global images, global images) and the images it trained on itself
        share = batch.global_size / ctx.world_size
        sums += torch.stack([value.detach().double() * share, sums.new_tensor(share), sums.new_tensor(images)])
    method.epoch_end(ctx, epoch)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    elapsed = time.perf_counter() - started
    totals = all_reduce_sum(sums)
    train_loss = float(totals[0] / totals[1])
    _check_divergence(ctx, epoch, train_loss, lr)
    row = dict(epoch=epoch, lr=lr, train_loss=train_loss, time_s=round(elapsed, 4), data_s=round(data_wait, 4),
               compute_s=round(elapsed - data_wait, 4), images=int(totals[2]),
               images_per_s=round(float(totals[2]) / max(elapsed, 1e-9), 1), peak_memory_mb=_peak_memory_mb(ctx.device))
    if stop is not None and stop <= steps_per_epoch and not (epoch == config.epochs - 1 and stop == steps_per_epoch):
        row["stopped_at_step"] = config.max_steps
    return row


def _step(ctx: Context, method: Method, batch: Batch) -> tuple[Tensor, int]:
    """One optimiser step on this rank's share of a global batch: the (global-batch) loss and the images used
    (the method's batch: e.g. real + synthetic)."""
    batch = method.batch(ctx, batch)
    batch.x = _memory_format(ctx, batch.x)
    with ctx.autocast():
        value = method.loss(ctx, batch)
        if value is None:
            value = ctx.mixed_loss(ctx.model(batch.x), batch)
    ctx.optimizer.zero_grad(set_to_none=True)
    value.backward()
    ctx.optimizer.step()
    return value, len(batch.y)


def _train_size(ctx: Context) -> int:
    return len(ctx.train_y) if ctx.train_y is not None else len(ctx.data.train)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory of the epoch (CUDA), else the process's peak resident memory so far."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class DivergedError(checks.LtkitError, FloatingPointError):
    """The training loss became non-finite or exploded: the run stops, its last good checkpoint is kept."""


def divergence_bound(num_classes: int) -> float:
    """The largest believable mean training loss: 100 ln C (a fresh classifier's cross-entropy is ln C)."""
    return 100 * math.log(max(num_classes, 2))


def _check_divergence(ctx: Context, epoch: int, train_loss: float, lr: float) -> None:
    bound = divergence_bound(ctx.data.num_classes)
    if not math.isfinite(train_loss) or train_loss > bound:
        kept = "the last good checkpoint is kept; " if (ctx.run_dir and (ctx.run_dir / "checkpoint.pt").is_file()) else ""
        raise DivergedError(f"epoch {epoch}: the training loss is {train_loss:.4g} (above {bound:.0f} = 100 ln C, or "
                            f"not finite): training diverged. {kept}lower lr (now {lr:g}) or check the data, then start "
                            f"again with {runs.OVERWRITE_HINT}.")


# =========================================================================== checkpoints
def _checkpoint(path: Path, ctx: Context, method: Method, epoch: int) -> None:
    runs.save_checkpoint(path, dict(
        epoch=epoch, model=ctx.base_model.state_dict(), optimizer=ctx.optimizer.state_dict(),
        loss=ctx.loss_fn.state_dict(), method=method.state_dict(), config=ctx.config.to_dict(),
    ))


def _restore(path: Path, ctx: Context, method: Method) -> int:
    return _load_state(path, ctx, method, "checkpoint", ". Use if_exists='overwrite' to restart.")


def _load_state(path: Path, ctx: Context, method: Method | None, kind: str, advice: str) -> int:
    """Weights and optimiser state from a checkpoint, and the loss's and ``method``'s (unless None: a run that
    continues another one starts those fresh); the epoch to train next."""
    state = runs.load_checkpoint(path, map_location=ctx.device)
    try:
        ctx.base_model.load_state_dict(state["model"])
        ctx.optimizer.load_state_dict(state["optimizer"])
        if method is not None:
            ctx.loss_fn.load_state_dict(state["loss"])
            method.load_state_dict(state["method"])
    except (KeyError, RuntimeError, ValueError) as err:
        detail = " ".join(str(err).split())
        raise runs.CheckpointError(f"the {kind} {path} does not fit this run ({detail}){advice}") from err
    return int(state["epoch"]) + 1


# =========================================================================== a trained run, rebuilt
@dataclass
class Trained:
    """A finished (or checkpointed) run rebuilt from its folder: see :func:`load_trained`."""

    record: dict  # ltkit.runs.load_run(run_dir)
    config: TrainConfig
    data: Any
    model: nn.Module  # the method's model (e.g. CWS's split model), weights loaded, eval mode, on the CPU
    loss_fn: losses.LTLoss  # with its state (e.g. DRW's epoch)
    method: Method  # set up and with its state
    epoch: int  # the last epoch the checkpoint holds
    context: "Context"  # the services a method sees (features of the training set, ...), on the CPU


def load_trained(run_dir: str | os.PathLike, data: Any = None) -> Trained:
    """Config, data, model, loss (with its state) and method of a run, from its record and checkpoint.

    ``data`` replaces the data set the config names (pass the one you trained on
    when you trained with ``fit(..., data=...)``).  The checkpoint is loaded with
    ``weights_only=True``: a file someone sent you cannot run code.
    """
    record = runs.load_run(run_dir)
    config = make_config(**{**record["config"], "progress": False})
    data = load_data(config) if data is None else data
    loss_fn = losses.make_loss(config.loss, data.class_counts, **config.loss_params)
    model = build_model(config, data, loss_fn)
    method = make_method(config.method, dict(config.method_params))
    device = torch.device("cpu")
    ctx = Context(config, data, data.class_counts, model, loss_fn, None, device, run_dir=Path(run_dir))
    if isinstance(data, ltdata.TensorData):
        ctx.train_x, ctx.train_y = data.x_train, data.y_train
    method.setup(ctx)
    state = runs.load_checkpoint(Path(run_dir) / "checkpoint.pt", map_location=device)
    try:
        ctx.base_model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        method.load_state_dict(state["method"])
    except (KeyError, RuntimeError, ValueError) as err:
        detail = " ".join(str(err).split())
        raise runs.CheckpointError(f"the checkpoint in {run_dir} does not fit the run its config.json describes "
                                   f"({detail}).") from err
    ctx.base_model.eval()
    ctx.model = ctx.base_model
    return Trained(record, config, data, ctx.model, loss_fn, method, int(state["epoch"]), ctx)


# =========================================================================== command line
if __name__ == "__main__":
    # ``python -m ltkit.train`` (and torchrun's ``-m ltkit.train``) is the command line of ltkit.cli.
    from ltkit.cli import main as _main

    _main()
