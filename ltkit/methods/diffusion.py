"""A small class-conditional pixel-space diffusion model, trained by ltkit.

Feedback-guided synthesis (Askari Hemmat et al., TMLR 2024; :mod:`ltkit.methods.feedback`)
steers a large pretrained latent diffusion model.  None can be downloaded
here, so ltkit trains its own tiny one on the bundled ``digits-lt`` data, with
the building blocks of ``diffusers``:

* **Model**: a :class:`diffusers.UNet2DModel` predicting the noise
  :math:`\\epsilon_\\theta(x_t, t, y)`, conditioned on the class through
  ``num_class_embeds = C + 1`` learned embeddings (added to the time
  embedding).  Index ``C`` is the **null class**: during training the label is
  replaced by it with probability ``p_uncond`` so that one network gives both
  the conditional and the unconditional prediction that classifier-free
  guidance (Ho & Salimans, 2021) needs.
* **Training** (DDPM, Ho et al., 2020): ``x_0`` scaled to [-1, 1], ``t``
  uniform in ``[0, T)``, ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε``
  (:meth:`diffusers.DDPMScheduler.add_noise`), loss ``‖ε - ε_θ(x_t, t, y)‖²``;
  AdamW, cosine learning rate, an exponential moving average (EMA) of the
  weights is what gets saved.
* **Sampling** (DDIM, Song et al., 2021, ``eta = 0``): a
  :class:`diffusers.DDIMScheduler` built from the same noise schedule, with the
  classifier-free guided noise ``ε = ε_u + w (ε_c - ε_u)``.  The loop
  :func:`ddim_loop` takes a hook ``guide(i, t, x_t) -> (x_t, ε)`` that may move
  ``x_t`` and supply the noise of the step (:mod:`ltkit.methods.feedback` puts the
  feedback gradient there: the released sampler steps with the noise predicted
  before the move, the re-evaluating one with the noise at the moved point), or
  ``before_step(i, t, x_t) -> x_t``, a move followed by the ordinary step; without
  a hook it is the plain sampler (so "scale 0" is bit-exactly the unguided
  sampler).
* The prediction of the clean image from a noisy one (DDIM eq. 12),
  ``x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)``, is :func:`predicted_x0`.

Choices (where the paper, which uses a pretrained LDM, says nothing):

* **Native 8x8.**  ``digits-lt`` images are 1x8x8; a UNet with two resolution
  levels (8x8 -> 4x4, ``block_out_channels=(32, 64)``, one ResNet layer per
  block, no attention) works at that size directly, so there is no
  up/down-sampling and synthetic images have exactly the data set's format
  (``uint8`` 1x8x8) and go straight to the same classifier.
* Linear β schedule (1e-4 .. 0.02, T = 1000), ``timestep_spacing="trailing"``
  for DDIM (the first step starts at t = 999, which matters with few steps).
* Random one-pixel shifts of the training images (the classifier preset's crop
  augmentation), ``p_uncond = 0.1``, EMA decay 0.999.
* The committed checkpoints (``ltkit/checkpoints/``) store the EMA weights in
  **float16** to keep the package small; they are loaded as float32.

The committed checkpoints are ``"digits-lt"`` (trained on the long-tailed
training set only: the honest small-scale setting, whose tail samples are poor)
and ``"digits-balanced"`` (a clearly labelled variant trained on the *balanced*
digits pool, standing in for a pretrained generator that knows more than the
long-tailed data; it never sees the test images).  :func:`make_checkpoints`
re-creates them.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import checks

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"  # ltkit/checkpoints (package data)
CHECKPOINTS = {"digits-lt": "digits-lt-ddpm", "digits-balanced": "digits-balanced-ddpm"}

UNET_DEFAULTS: dict[str, Any] = dict(
    block_out_channels=(32, 64), layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, add_attention=False,
)
SCHEDULE_DEFAULTS: dict[str, Any] = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                         beta_end=0.02, prediction_type="epsilon")

__all__ = ["ClassDiffusion", "CHECKPOINTS", "train_diffusion", "load_diffusion", "make_checkpoints",
           "predicted_x0", "ddim_loop", "DDIMTrajectory", "balanced_digits"]


# =========================================================================== the model
@dataclass
class ClassDiffusion:
    """A class-conditional UNet with its noise schedule and a null class for CFG.

    ``unet(x, t, class_labels=y).sample`` predicts the noise; ``y = null_class``
    (``= num_classes``) is the unconditional prediction.  Images live in
    [-1, 1] inside the model; :meth:`sample` returns them in [0, 1].
    """

    unet: Any  # diffusers.UNet2DModel
    schedule: dict  # DDPMScheduler config (also used to build the DDIM sampler)
    classes: list[str]
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def noise_scheduler(self):
        """The DDPM scheduler used in training (``add_noise``)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler(**self.schedule)

    def ddim_scheduler(self):
        """A DDIM sampler on the same noise schedule (eta = 0, ``timestep_spacing="trailing"``)."""
        from diffusers import DDIMScheduler

        return DDIMScheduler(**self.schedule, timestep_spacing="trailing", clip_sample=True)

    def check_labels(self, labels: Tensor | list[int]) -> Tensor:
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.numel() == 0:
            raise ValueError(f"labels must be a non-empty 1-D tensor of class indices, got {tuple(labels.shape)} "
                             f"{labels.dtype}.")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"class labels must lie in [0, {self.num_classes}) (classes {self.classes}); "
                             f"got values in [{int(labels.min())}, {int(labels.max())}].")
        return labels.long().to(self.device)

    def initial_noise(self, n: int, seed: int | Tensor = 0) -> Tensor:
        """``x_T``: standard normal noise, one generator per image when ``seed`` is a tensor of seeds."""
        shape = self.image_shape
        if isinstance(seed, Tensor):
            return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seed])
        return torch.randn((n, *shape), generator=torch.Generator().manual_seed(int(seed)))

    @torch.no_grad()
    def sample(self, labels: Tensor | list[int], *, steps: int = 10, cfg_scale: float = 2.0, seed: int = 0,
               noise: Tensor | None = None, before_step: Callable | None = None, guide: Callable | None = None,
               record: bool = False) -> Tensor | "DDIMTrajectory":
        """DDIM samples of the given classes in [0, 1] (or the whole trajectory with ``record=True``);
        ``before_step`` / ``guide``: the hooks of :func:`ddim_loop`."""
        labels = self.check_labels(labels)
        x = self.initial_noise(len(labels), seed) if noise is None else noise
        cond = dict(class_labels=labels)
        uncond = dict(class_labels=torch.full_like(labels, self.null_class))
        out = ddim_loop(self.unet, self.ddim_scheduler(), x.to(self.device), cond, uncond, steps=steps,
                        cfg_scale=cfg_scale, before_step=before_step, guide=guide, record=record)
        if record:
            return out
        return to_unit(out)

    def save(self, path: str | Path, half: bool = True) -> Path:
        """``path/unet`` (diffusers ``save_pretrained``), ``path/ltkit.json`` (schedule, classes, info)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        unet = copy.deepcopy(self.unet).to("cpu")
        (unet.half() if half else unet).save_pretrained(path / "unet")
        meta = dict(format="ltkit.diffusion/1", schedule=self.schedule, classes=self.classes, info=self.info,
                    weights_dtype="float16" if half else "float32")
        (path / "ltkit.json").write_text(json.dumps(meta, indent=1))
        return path


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] model space -> [0, 1] image space (clamped)."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def to_model_space(x: Tensor) -> Tensor:
    """``uint8`` or [0, 1] images -> [-1, 1]."""
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    return x * 2 - 1


def make_unet(num_classes: int, in_channels: int = 1, image_size: int = 8, **overrides: Any):
    """A small ``UNet2DModel`` with ``num_classes + 1`` class embeddings (the last is the null class)."""
    from diffusers import UNet2DModel

    if image_size % 2:
        raise ValueError(f"image_size={image_size} must be even (the UNet down-samples once).")
    params = {**UNET_DEFAULTS, **overrides}
    return UNet2DModel(sample_size=image_size, in_channels=in_channels, out_channels=in_channels,
                       num_class_embeds=num_classes + 1, **params)


# =========================================================================== x̂0 and the DDIM loop
def predicted_x0(x_t: Tensor, model_output: Tensor, alpha_bar: Tensor | float,
                 prediction_type: str = "epsilon") -> Tensor:
    """The clean image predicted from ``x_t`` (DDIM eq. 12), no clipping.

    epsilon: ``(x_t - sqrt(1 - ᾱ) ε) / sqrt(ᾱ)``; v_prediction: ``sqrt(ᾱ) x_t - sqrt(1 - ᾱ) v``;
    sample: the output itself.  ``alpha_bar`` is a number or a per-sample tensor.
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    if alpha_bar.dim() == 1:
        alpha_bar = alpha_bar.view(-1, *([1] * (x_t.dim() - 1)))
    if prediction_type == "epsilon":
        return (x_t - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose epsilon, v_prediction or sample.")


@dataclass
class DDIMTrajectory:
    """A recorded DDIM run: ``states[i]`` is ``x_t`` before step ``i`` (``states[-1]`` the result),
    ``x0_preds[i]`` the scheduler's (clipped, CFG) ``x̂0`` at step ``i``; model space [-1, 1]."""

    timesteps: list[int]
    states: Tensor  # (steps + 1, B, C, H, W)
    x0_preds: Tensor  # (steps, B, C, H, W)

    @property
    def result(self) -> Tensor:
        return self.states[-1]


def _cat_kwargs(a: dict, b: dict) -> dict:
    if set(a) != set(b):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(a)} and {sorted(b)}.")
    return {k: torch.cat([a[k], b[k]]) for k in a}


def cfg_noise(unet, x: Tensor, t: Tensor, cond: dict, uncond: dict, cfg_scale: float) -> Tensor:
    """Classifier-free guided model output ``u + w (c - u)`` from one batched forward pass."""
    dtype = next(unet.parameters()).dtype
    both = unet(torch.cat([x, x]).to(dtype), t, **_cat_kwargs(cond, uncond)).sample.float()
    c, u = both.chunk(2)
    return u + cfg_scale * (c - u)


def ddim_loop(unet, scheduler, x: Tensor, cond: dict, uncond: dict, *, steps: int, cfg_scale: float,
              before_step: Callable[[int, Tensor, Tensor], Tensor] | None = None,
              guide: Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor] | None] | None = None,
              record: bool = False, progress: bool = False) -> Tensor | DDIMTrajectory:
    """Deterministic DDIM (eta = 0) with classifier-free guidance, in model space.

    ``cond`` / ``uncond`` are keyword arguments of ``unet`` (``class_labels=...``
    or ``encoder_hidden_states=...``).  Two hooks may change a step:

    * ``before_step(i, t, x_t) -> x_t`` moves ``x_t`` before step ``i``; the
      step then uses the CFG noise predicted at the moved point;
    * ``guide(i, t, x_t) -> (x_t, ε)`` or ``None`` replaces the step's noise
      prediction: it returns the (moved) ``x_t`` and the CFG noise the DDIM step
      uses with it — the feedback guidance of :mod:`ltkit.methods.feedback`,
      whose released sampler steps with the noise predicted *before* its move.
      ``None`` is the plain step.

    Everything is float32 except the network's own forward pass, which runs in
    the network's dtype.
    """
    checks.integer("steps", steps, low=1, hint="the paper uses 30 DDIM steps")
    checks.real("cfg_scale", cfg_scale, low=0, hint="1 = no guidance, the paper uses 3")
    if not torch.isfinite(x).all():
        raise ValueError("the initial noise x_T contains NaN or inf values: pass finite noise.")
    scheduler.set_timesteps(steps, device=x.device)
    x = x.float()
    states, x0s = [x], []
    timesteps = scheduler.timesteps
    iterator = timesteps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(timesteps, desc="DDIM", leave=False)
    for i, t in enumerate(iterator):
        if before_step is not None:
            x = before_step(i, t, x)
        guided = guide(i, t, x) if guide is not None else None
        if guided is None:
            eps = cfg_noise(unet, scheduler.scale_model_input(x, t), t, cond, uncond, cfg_scale)
        else:
            x, eps = guided
        out = scheduler.step(eps, t, x, eta=0.0)
        x = out.prev_sample.float()
        if record:
            states.append(x)
            x0s.append(out.pred_original_sample.float())
    if record:
        return DDIMTrajectory([int(t) for t in timesteps], torch.stack(states), torch.stack(x0s))
    return x


# =========================================================================== training
def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _check_training_args(steps: int, batch_size: int, lr: float, p_uncond: float, ema_decay: float) -> None:
    checks.integer("steps", steps, low=1, hint="optimiser steps; 2000 is the default")
    checks.integer("batch_size", batch_size, low=1, hint="128 is the default")
    checks.real("lr", lr, low=0, low_open=True, hint="2e-3 is the default")
    checks.real("p_uncond", p_uncond, low=0, high=1, high_open=True,
                hint="0.1 is usual; 0 disables classifier-free guidance")
    checks.real("ema_decay", ema_decay, low=0, high=1, high_open=True, hint="0.999 is the default")


def train_diffusion(data, *, steps: int = 2000, batch_size: int = 128, lr: float = 2e-3, p_uncond: float = 0.1,
                    ema_decay: float = 0.999, shift: int = 1, seed: int = 0, device: str = "cpu",
                    progress: bool = True, unet_params: dict | None = None,
                    schedule: dict | None = None) -> ClassDiffusion:
    """Train a class-conditional DDPM on ``data.x_train`` / ``data.y_train`` (a TensorData).

    Returns the EMA model.  ``shift`` is the random-shift augmentation in pixels
    (0 = none).  Deterministic for a given seed on a given machine.
    """
    from diffusers import DDPMScheduler

    from ..train import augment_batch

    _check_training_args(steps, batch_size, lr, p_uncond, ema_decay)
    x_all = getattr(data, "x_train", None)
    if not isinstance(x_all, Tensor) or x_all.dim() != 4:
        raise TypeError("data must be a TensorData (images x_train of shape (N, C, H, W)); "
                        f"got {type(data).__name__}.")
    torch.manual_seed(seed)
    channels, size = x_all.shape[1], x_all.shape[2]
    unet = make_unet(data.num_classes, channels, size, **(unet_params or {})).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    schedule = {**SCHEDULE_DEFAULTS, **(schedule or {})}
    noise_scheduler = DDPMScheduler(**schedule)
    x_all, y_all = to_model_space(x_all).to(device), data.y_train.long().to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    warmup = min(100, steps // 10 + 1)
    lr_at = lambda s: lr * min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    losses = []
    bar = _progress_bar(steps, "diffusion training", progress)
    for step in range(steps):
        idx = torch.randint(0, len(y_all), (batch_size,), generator=gen)
        x0 = x_all[idx.to(device)]
        if shift:
            x0 = augment_batch(x0 + 1, shift, False, gen) - 1  # shift with background (-1) padding
        y = y_all[idx.to(device)]
        drop = (torch.rand(batch_size, generator=gen) < p_uncond).to(device)
        y = torch.where(drop, torch.full_like(y, data.num_classes), y)
        t = torch.randint(0, schedule["num_train_timesteps"], (batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        loss = F.mse_loss(unet(noise_scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        bar.update()
    bar.close()
    if not math.isfinite(losses[-1]):
        raise FloatingPointError(f"diffusion training diverged (loss {losses[-1]}); lower lr (now {lr}).")
    info = dict(dataset=getattr(data, "name", "?"), class_counts=[int(c) for c in data.class_counts],
                data_info=getattr(data, "info", {}), steps=steps, batch_size=batch_size, lr=lr, p_uncond=p_uncond,
                ema_decay=ema_decay, shift=shift, seed=seed,
                final_loss=round(sum(losses[-100:]) / len(losses[-100:]), 5))
    return ClassDiffusion(ema.eval(), schedule, list(data.classes), info)


# =========================================================================== checkpoints
def _resolve(path_or_name: str | Path) -> Path:
    if isinstance(path_or_name, str) and path_or_name in CHECKPOINTS:
        return CHECKPOINT_DIR / CHECKPOINTS[path_or_name]
    return Path(path_or_name)


def load_diffusion(path_or_name: str | Path = "digits-lt", device: str = "cpu") -> ClassDiffusion:
    """Load a saved :class:`ClassDiffusion`: a folder, or a committed checkpoint name (``"digits-lt"``,
    ``"digits-balanced"``).  Weights are loaded as float32, frozen, in eval mode."""
    from diffusers import UNet2DModel

    path = _resolve(path_or_name)
    meta_file = path / "ltkit.json"
    if not meta_file.is_file() or not (path / "unet" / "config.json").is_file():
        raise FileNotFoundError(
            f"no diffusion checkpoint at {path} (expected {meta_file.name} and unet/config.json). Committed "
            f"checkpoints: {', '.join(CHECKPOINTS)}; re-create them with ltkit.methods.diffusion.make_checkpoints(), or train "
            "one with ltkit.methods.diffusion.train_diffusion(data).save(path).")
    meta = json.loads(meta_file.read_text())
    unet = UNet2DModel.from_pretrained(path / "unet", torch_dtype=torch.float32, low_cpu_mem_usage=False).float()
    unet = unet.to(device).eval().requires_grad_(False)
    return ClassDiffusion(unet, meta["schedule"], meta["classes"], meta.get("info", {}))


def balanced_digits(seed: int = 0):
    """The *balanced* digits pool (every non-test image, cut to the smallest class: 144 per class),
    with the same balanced test split as ``digits-lt``."""
    from .. import data as ltdata

    return ltdata.load_digits_lt(imbalance_factor=1, n_max=144, seed=seed)


def make_checkpoints(steps: int = 2000, names: tuple[str, ...] = ("digits-lt", "digits-balanced"),
                     out_dir: str | Path = CHECKPOINT_DIR, progress: bool = True) -> dict[str, Path]:
    """Re-create the committed diffusion checkpoints (2,000 steps of batch 128: about 10 CPU-minutes each)."""
    from .. import data as ltdata

    datasets = {"digits-lt": lambda: ltdata.load_digits_lt(), "digits-balanced": balanced_digits}
    out = {}
    for name in names:
        model = train_diffusion(datasets[name](), steps=steps, progress=progress)
        model.info["variant"] = name
        out[name] = model.save(Path(out_dir) / CHECKPOINTS[name])
    return out
