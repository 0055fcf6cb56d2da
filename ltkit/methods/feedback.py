"""Feedback-guided data synthesis for long-tailed classification.

Askari Hemmat, Pezeshki, Bordes, Drozdzal, Romero-Soriano, *Feedback-guided
Data Synthesis for Imbalanced Classification*, TMLR 2024
(code: facebookresearch/Feedback-guided-Data-Synthesis).

Idea
----
Fill every class of a long-tailed training set with synthetic images from a
class-conditional diffusion model, and *steer* the sampler towards images the
classifier still finds informative.  A frozen classifier ``f`` trained on the
long-tailed real data only gives a criterion ``C`` on the model's current
guess of the clean image; its gradient pushes the noisy sample uphill.

At a guided DDIM step ``t`` (every ``every``-th step, in float32), as the
released sampler (``fg_pipe.py``: ``__call__`` and ``cond_fn``) does it:

1. the classifier-free guided noise ``ε = ε_u + w (ε_c - ε_u)`` at ``x_t``,
   with ``ε_c = ε_θ(x_t, t, y)`` and ``ε_u`` the null class's prediction;
2. ``x̂0 = (x_t - sqrt(1 - ᾱ_t) ε_c) / sqrt(ᾱ_t)`` from the *conditional*
   prediction (:func:`ltkit.methods.diffusion.predicted_x0`), in the graph of
   ``x_t``, blended ``m = f x̂0 + (1 - f) x_t`` with ``f = sqrt(1 - ᾱ_t)``;
3. the decoded image (``(m + 1) / 2`` here, the VAE at paper scale) min–max
   rescaled to [0, 1] with detached minimum and maximum (:func:`minmax_rescale`),
   and a criterion on the classifier's output, ``p = softmax(logits)``:

   * ``"loss"``:     ``C = -log p_y`` (the intended class ``y``; :func:`target_loss`);
   * ``"entropy"``:  ``C = -Σ_k p_k log p_k`` (the released code writes it as the
     cross-entropy of the logits with their own, not detached, softmax; :func:`entropy`);
   * ``"hardness"``: ``C = (φ - μ_y)ᵀ Σ⁻¹ (φ - μ_y)``, the squared Mahalanobis
     distance of the classifier's penultimate feature ``φ`` to the
     class-conditional Gaussian of the *real* training features (Sehwag et
     al., CVPR 2022; the paper's third criterion, not in the released code).
     One covariance shared by all classes (tied), shrunk towards
     ``(tr Σ / D) I`` — tail classes have fewer images than feature dimensions;

4. ``g = ∇_{x_t} C``, normalised: ``g ← s · ‖x_t‖ · g / (‖g‖ + 1e-8)``
   (:func:`normalised_step`);
5. ``x_t ← x_t + g`` (gradient **ascent**), then the DDIM step from the moved
   ``x_t`` with the noise ``ε`` of step 1, predicted *before* the move.

``s = 0`` skips the feedback: it is bit-exactly the unguided sampler.

The two samplers (``Guidance.mode``)
------------------------------------
* ``"released"`` (the default, and :data:`PAPER_SETTINGS`): the steps above.
  ``ε_c`` of step 1 and of step 2 is one prediction, made once with gradients
  (:func:`released_guidance`): a guided step costs ``B + B`` images through the
  network (conditional with gradients, unconditional without) and one
  backward pass, against ``2B`` for a plain step.
* ``"re-evaluate"`` (ltkit's earlier sampler, :data:`QUICK_SETTINGS`): no blend,
  no rescaling, ``eps = 1e-12``, and the DDIM step uses the CFG noise predicted
  again at the moved ``x_t``: ``B`` (with gradients) ``+ 2B`` images per guided step.

Both change the effective strength of a given ``s``: when the noise is
predicted again, the network reads part of the move as noise and takes it back;
reusing it, the whole move goes into ``x̂0`` (amplified by ``1 / sqrt(ᾱ_t)``)
and the next ``x_t``.  The blend and the rescaling change what the classifier
sees and so the gradient.  ``blend`` and ``rescale`` can be set apart from the
mode; notebook 06 shows the samplers side by side.

Numerics: the criteria's gradients are written out (:func:`entropy`,
:func:`target_loss`) so that they keep their direction when the classifier is
confident.  Differentiated through ``log_softmax`` in float32, the entropy's
gradient is up to 70 degrees off the exact (float64) one from a logit gap of
about 20 on, and ``F.cross_entropy``'s from about 17 (its value is then 0);
the normalisation makes any such direction a full step.  A row whose other
probabilities all underflow (a gap beyond ~100) has value and gradient exactly
0, so the step is 0 rather than a direction made of rounding noise.

Filling: class ``c`` with ``n_c`` real images gets ``max(N_target - n_c, 0)``
synthetic ones (``N_target`` = the largest class by default), so real +
synthetic is uniform (:func:`fill_counts`, :func:`synthesize_fill`, saved and
loaded as a :class:`SyntheticSet`).

Training (method ``"feedback-fill"``, :class:`FeedbackFill`): every real
mini-batch drawn by the engine gets a synthetic half of the same size
(``real_fraction = 0.5``), and the loss is the run's loss.  With
``loss="bs"`` the engine builds Balanced Softmax from the *real* class counts:
Balanced Softmax with the real long-tailed prior, the paper's recipe
(``prior="real"``).  ``prior="mixed"`` instead uses the class distribution the
mixed mini-batches actually have.

Departures from the released code
---------------------------------
Each is "departure from facebookresearch/Feedback-guided-Data-Synthesis: what
and why" (files ``fg_pipe.py``, ``utils_gen.py``, ``generate_csvs_offline.py``
at commit 60dd027b):

* departure from facebookresearch/Feedback-guided-Data-Synthesis: batches.  The
  released pipeline makes one image per call, so its gradient norm, ``x_t``
  norm and min–max rescaling are per image; ltkit samples batches and takes
  all three per sample, which is the released computation image by image.
* departure from facebookresearch/Feedback-guided-Data-Synthesis: precision.
  The released pipeline and classifier run in float16; ltkit's criterion,
  gradient and norms are float32 with the written-out gradients above (the
  network may still run in float16), because float16 norms underflow and the
  autograd form loses the gradient's direction on confident rows.
* departure from facebookresearch/Feedback-guided-Data-Synthesis: the feedback
  classifier.  ``utils_gen.get_classifier`` loads torchvision's ImageNet
  ResNet-50 weights; ltkit uses a classifier trained on the long-tailed data
  only (:class:`FeedbackClassifier`, e.g. :meth:`FeedbackClassifier.from_run`),
  as the paper describes, and feeds it images in [0, 1] (ltkit models normalise
  as their first step).
* departure from facebookresearch/Feedback-guided-Data-Synthesis: CFG scale.
  :data:`PAPER_SETTINGS` has the paper's 3; ``generate_csvs_offline.py`` uses 5.
  The released every-5th-step frequency and scale 0.03 are kept.
* departure from facebookresearch/Feedback-guided-Data-Synthesis: the
  scheduler.  The released code steps with the pipeline's own scheduler;
  ltkit uses DDIM (eta = 0) on the same noise schedule, the paper's sampler.
  The released code skips the unconditional branch when ``cfg <= 1``; ltkit
  always evaluates it (``cfg = 1`` then equals the conditional noise up to rounding).
* departure from facebookresearch/Feedback-guided-Data-Synthesis: fill counts.
  The released CSV asks for ``max(N_target - n_c, 1)`` images per class (at
  least one even for a full class); ltkit makes ``max(N_target - n_c, 0)`` so
  that real + synthetic is exactly uniform, the paper's description.
* departure from facebookresearch/Feedback-guided-Data-Synthesis: seeds and
  failures.  The released generator is seeded from the OS and a NaN image is
  retried once then skipped; ltkit seeds image ``k`` of class ``c`` by
  ``(seed, c, k)`` (reproducible, batch-size independent) and stops with an
  error naming the step and the samples.  :func:`pipeline_fill` keeps the
  decoded size unless ``image_size`` is given (the released code saves 256x256).
* departure from facebookresearch/Feedback-guided-Data-Synthesis: the quick
  settings.  :data:`QUICK_SETTINGS` (and the committed fills made with them)
  use ``mode="re-evaluate"``: the tiny model's ``s = 0.1`` was chosen by eye
  with that sampler, and notebook 06's trained results rest on those fills.
  The released sampler is the default everywhere else and sits beside it in
  notebook 06.
* :func:`minmax_rescale` leaves a constant image at 0 where the released
  ``process_image`` would divide by zero.

Choices where the paper is silent or the setting differs (all parameters)
----------------------------------------------------------------------
* Small scale: a tiny pixel-space model (:mod:`ltkit.methods.diffusion`, no VAE, so
  ``decode(x̂0) = (x̂0 + 1) / 2``, unclipped so the gradient flows) trained on
  ``digits-lt``, and a ``small-cnn`` feedback classifier trained with plain
  cross-entropy (ERM) on ``digits-lt`` through :func:`ltkit.train.fit`
  (committed beside the diffusion checkpoint; :func:`train_feedback_classifier`
  re-creates it).
* The paper's settings (30 DDIM steps, CFG 3, feedback scale 0.03; the released
  code guides every 5th step) with the released sampler are :data:`PAPER_SETTINGS`.
  The tiny model's quick settings (:data:`QUICK_SETTINGS`: 10 DDIM steps, CFG 2,
  ``s = 0.1`` at every 2nd step, ``mode="re-evaluate"``) were chosen by looking
  at samples and at a second classifier: CFG 3 over-saturates the tiny model's
  digits, 10 steps look as good as 20, and ``s ≥ 0.3`` turns the samples into
  adversarial noise.
* Hardness covariance shrinkage: Ledoit–Wolf (``shrinkage=None``) or a fixed λ.
* Initial noise of synthetic image ``k`` of class ``c`` is seeded by
  ``(seed, c, k)``, so a set does not depend on the batch size.
* The synthetic half is drawn without replacement from one permutation of the
  synthetic set per epoch (seeded by ``(seed, epoch)``), sharded by position
  over DDP ranks exactly like the engine's real samples (the union over ranks
  is the single-process batch), and augmented like the real half with a
  generator from ``(seed, epoch, rank)``: resume is bit-exact.
* At ImageNet-LT / Places-LT scale the same loop drives a diffusers latent
  pipeline on disk (:func:`pipeline_feedback_sample`: the VAE decodes ``x̂0``
  before the classifier; :func:`pipeline_fill` writes PNGs and a split file,
  which ``feedback-fill`` reads for split-file data sets).  The paper's
  image-embedding conditioning (with dropout 0.5) is not implemented; prompts
  or embeddings condition the model.
* Committed with the package (``ltkit/checkpoints/``, re-made by
  :func:`make_committed`): the feedback classifier and the full fills of
  ``digits-lt`` (s = 0 and one per criterion, per generator), so that the
  notebook's quick mode trains on them without minutes of sampling.  A run names
  one as ``method_params={"synthetic": "committed:digits-lt/loss"}``
  (:func:`committed_fill`; ``"committed:<generator>/<fill>"``, resolved by
  :func:`synthetic_set_path` where the run trains), so its record holds no path
  into the installed package and is reused on another machine.  They were
  made before the entropy / loss gradients were written out: with the current
  code on one machine the s = 0 and hardness fills come out the same as with the
  earlier code, while about 1 in 5 entropy-fill and 1 in 8 loss-fill images
  differ (at the first guided step, t = 999, the unclipped ``x̂0`` drives about
  9 % of the classifier's rows to logit gaps above 15, where the earlier
  gradients lost their direction).  Guided fills are also not bit-identical
  across machines or thread counts: rounding differences grow along the guided
  trajectory.
"""

from __future__ import annotations

import hashlib
import json
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks, train
from ..checks import param
from . import diffusion
from .diffusion import CHECKPOINT_DIR, ClassDiffusion, predicted_x0

CRITERIA = ("loss", "entropy", "hardness")
CLASSIFIER_CHECKPOINTS = {"digits-lt": "digits-lt-classifier"}
SYNTHETIC_DIR = CHECKPOINT_DIR / "synthetic"
FILL_LABELS = ("s0", *CRITERIA)  # the committed fills: no feedback, then one per criterion

__all__ = ["CRITERIA", "MODES", "FILL_LABELS", "Guidance", "PAPER_SETTINGS", "QUICK_SETTINGS", "FeedbackClassifier",
           "criterion_values", "entropy", "target_loss", "fit_class_gaussians", "normalised_step", "minmax_rescale", "feedback_gradient",
           "released_guidance", "feedback_hook",
           "guided_sample", "pipeline_feedback_sample", "pipeline_fill", "fill_counts", "synthesize_fill",
           "SyntheticSet", "FeedbackFill", "train_feedback_classifier", "load_feedback_classifier",
           "synthetic_set_path", "committed_fill", "resolve_synthetic", "COMMITTED_PREFIX",
           "fill_guidance", "make_committed"]


# =========================================================================== settings
MODES = ("released", "re-evaluate")
_MODE_DEFAULTS = {"released": dict(blend=True, rescale=True, eps=1e-8),
                  "re-evaluate": dict(blend=False, rescale=False, eps=1e-12)}


@dataclass(frozen=True)
class Guidance:
    """Feedback guidance: which criterion, scale ``s``, applied at every ``every``-th DDIM step, and the sampler.

    ``mode`` (see the module docstring, "The two samplers"):

    * ``"released"`` (default): the sampler of facebookresearch/Feedback-guided-Data-Synthesis
      (``fg_pipe.py``): the DDIM step uses the classifier-free guided noise predicted *before*
      the guidance move (its conditional half is the prediction the criterion is differentiated
      through: one network evaluation saved per guided step), ``x̂0`` blended with ``x_t``, the
      decoded image min–max rescaled, step norm ``s ‖x_t‖ g / (‖g‖ + 1e-8)``;
    * ``"re-evaluate"``: ltkit's earlier sampler: the noise is predicted again at the moved
      ``x_t``, no blend, no rescaling, ``eps = 1e-12``.

    ``blend`` and ``rescale`` default (``None``) to the mode's choice and may be set apart from
    it; after construction they hold the value in force.
    """

    criterion: str = "entropy"
    scale: float = 0.03
    every: int = 1
    mode: str = "released"
    blend: bool | None = None
    rescale: bool | None = None

    def __post_init__(self) -> None:
        checks.choice("criterion", self.criterion, CRITERIA)
        checks.real("scale", self.scale, low=0, hint="0 = no feedback; the paper uses 0.03")
        checks.integer("every", self.every, low=1, hint="1 = every DDIM step; the released code guides every 5th")
        checks.choice("mode", self.mode, MODES, hint="'released': the authors' sampler; 're-evaluate': the noise "
                                                     "predicted again after the guidance move")
        for name in ("blend", "rescale"):
            value = getattr(self, name)
            object.__setattr__(self, name, _MODE_DEFAULTS[self.mode][name] if value is None
                               else checks.flag(name, value))

    @property
    def eps(self) -> float:
        """The ``eps`` of the step normalisation ``g / (‖g‖ + eps)``: 1e-8 as released, 1e-12 re-evaluating."""
        return _MODE_DEFAULTS[self.mode]["eps"]

    @property
    def reuses_noise(self) -> bool:
        """Whether the DDIM step uses the noise predicted before the guidance move (the released sampler)."""
        return self.mode == "released"

    def applies(self, step: int) -> bool:
        return self.scale > 0 and step % self.every == 0


PAPER_SETTINGS = dict(steps=30, cfg_scale=3.0, guidance=Guidance("entropy", 0.03, every=5, mode="released"))
QUICK_SETTINGS = dict(steps=10, cfg_scale=2.0, guidance=Guidance("entropy", 0.1, every=2, mode="re-evaluate"))


# =========================================================================== the frozen classifier
def fit_class_gaussians(features: Tensor, labels: Tensor, num_classes: int,
                        shrinkage: float | None = None) -> tuple[Tensor, Tensor, float]:
    """Class means and the precision of the tied, shrunk covariance of ``features``.

    ``Σ = 1/N Σ_i (φ_i - μ_{y_i})(φ_i - μ_{y_i})ᵀ``, ``Σ_λ = (1 - λ) Σ + λ (tr Σ / D) I``;
    ``shrinkage=None`` picks λ by Ledoit–Wolf.  Returns ``(means (C, D), precision (D, D), λ)``.
    """
    from sklearn.covariance import ledoit_wolf

    phi = features.double().cpu()
    labels = labels.long().cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"every class needs at least one real image for its mean; empty: "
                         f"{torch.nonzero(counts == 0).flatten().tolist()}.")
    means = torch.zeros(num_classes, phi.shape[1], dtype=torch.float64).index_add_(0, labels, phi) / counts[:, None]
    residual = phi - means[labels]
    cov = residual.T @ residual / len(phi)
    if shrinkage is None:
        _, shrinkage = ledoit_wolf(residual.numpy(), assume_centered=True)
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage={shrinkage} must lie in [0, 1] (or None for Ledoit–Wolf).")
    dim = cov.shape[0]
    shrunk = (1 - shrinkage) * cov + shrinkage * cov.trace() / dim * torch.eye(dim, dtype=cov.dtype)
    return means.float(), torch.linalg.inv(shrunk).float(), float(shrinkage)


def _float(x: Tensor) -> Tensor:
    """float32, or float64 when given (a reference computation)."""
    return x if x.dtype == torch.float64 else x.float()


def _shifted(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``z' = z - max z`` (<= 0), ``p = softmax(z)`` and ``log Σ_k exp(z'_k)`` computed as ``log1p`` of the
    non-maximal terms, so that a confident row keeps its tiny probabilities and their sum exactly."""
    z = logits - logits.max(1, keepdim=True).values
    e = z.exp()
    top = F.one_hot(z.argmax(1), z.shape[1]).bool()
    rest = e.masked_fill(top, 0).sum(1)  # Σ over all but one maximal entry: no 1 + tiny rounding
    return z, e / (1 + rest)[:, None], rest.log1p()


class _Entropy(torch.autograd.Function):
    """``H(z) = -Σ_k p_k log p_k`` with its gradient written out: ``∂H/∂z_j = -p_j (z'_j - Σ_k p_k z'_k)``."""

    @staticmethod
    def forward(ctx, logits: Tensor) -> Tensor:
        z, p, log_sum = _shifted(logits)
        mean_z = (p * z).sum(1)  # <= 0
        ctx.save_for_backward(p, z, mean_z)
        return log_sum - mean_z  # two non-negative terms: no cancellation

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        p, z, mean_z = ctx.saved_tensors
        return -p * (z - mean_z[:, None]) * grad[:, None]


class _TargetLoss(torch.autograd.Function):
    """``-log p_y`` with its gradient written out: ``p_j`` for ``j != y``, ``-Σ_{k != y} p_k`` at ``y``."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> Tensor:
        z, p, log_sum = _shifted(logits)
        target = F.one_hot(labels, z.shape[1]).bool()
        ctx.save_for_backward(p, target)
        return log_sum - z.gather(1, labels[:, None])[:, 0]  # log Σ exp(z') - z'_y, both >= 0

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        p, target = ctx.saved_tensors
        others = p.masked_fill(target, 0)
        return (others - target * others.sum(1, keepdim=True)) * grad[:, None], None


def entropy(logits: Tensor) -> Tensor:
    """Per-row entropy of ``softmax(logits)`` in float32, accurate also for a confident classifier.

    The value is ``log Σ_k exp(z'_k) - Σ_k p_k z'_k`` with ``z' = z - max z`` (two non-negative terms)
    and the gradient is written out, ``∂H/∂z_j = -p_j (z'_j - Σ_k p_k z'_k)``.  Differentiating
    ``-Σ p log p`` through ``log_softmax`` instead subtracts two numbers close to 1 in the gradient of the
    winning logit: on saturated rows (a logit gap of 20 or more) the float32 gradient then points up to
    70 degrees away from the exact one, and the per-sample normalisation of the guidance step turns
    that into a full-size step.  When every other probability underflows (a gap beyond ~100) the value
    and the gradient are exactly 0.
    """
    return _Entropy.apply(_float(logits))


def target_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-row ``-log p_y`` (cross-entropy with the intended class) in float32, accurate when ``p_y`` is near 1.

    ``F.cross_entropy`` returns 0 and the gradient ``p_y - 1 = 0`` at ``y`` once ``1 - p_y`` is below
    float32's resolution near 1 (a logit gap of about 17): the gradient loses its largest component.
    Here ``1 - p_y`` is the sum of the other probabilities.
    """
    labels = torch.as_tensor(labels, device=logits.device).long()
    return _TargetLoss.apply(_float(logits), labels)


def criterion_values(kind: str, logits: Tensor, labels: Tensor, features: Tensor | None = None,
                     means: Tensor | None = None, precision: Tensor | None = None) -> Tensor:
    """Per-sample criterion (float32): loss ``-log p_y`` (:func:`target_loss`), entropy (:func:`entropy`),
    or the Mahalanobis hardness ``(φ - μ_y)ᵀ Σ⁻¹ (φ - μ_y)``."""
    checks.choice("criterion", kind, CRITERIA)
    if kind == "loss":
        return target_loss(logits, labels)
    if kind == "entropy":
        return entropy(logits)
    if features is None or means is None or precision is None:
        raise checks.InputError("the hardness criterion needs features and the class Gaussians (fit_class_gaussians).")
    diff = features.float() - means[labels]
    return ((diff @ precision) * diff).sum(1)


class FeedbackClassifier(nn.Module):
    """A frozen ltkit classifier (``features`` / ``head``) and the class Gaussians of its real features.

    ``criterion(images, labels, kind)`` takes images in [0, 1] (any size: they
    are resized to ``input_size`` when it is set) and returns one value per image.
    """

    def __init__(self, model: nn.Module, means: Tensor | None = None, precision: Tensor | None = None,
                 input_size: int | None = None, meta: dict | None = None) -> None:
        super().__init__()
        if not (hasattr(model, "features") and hasattr(model, "head")):
            raise TypeError("the feedback classifier must have features(x) and head (every ltkit.models model does).")
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("means", means if means is not None else torch.zeros(0))
        self.register_buffer("precision", precision if precision is not None else torch.zeros(0))
        self.input_size = input_size
        self.meta = dict(meta or {})

    def train(self, mode: bool = True) -> "FeedbackClassifier":  # always frozen: batch norm in eval mode
        return super().train(False)

    def _prepare(self, images: Tensor) -> Tensor:
        images = images.float()
        if self.input_size and images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images

    def forward(self, images: Tensor) -> Tensor:
        return self.model.head(self.model.features(self._prepare(images)))

    def fit_gaussians(self, images: Tensor, labels: Tensor, shrinkage: float | None = None,
                      batch_size: int = 1024) -> "FeedbackClassifier":
        """Class-conditional Gaussians of the real training features (``uint8`` or [0, 1] images)."""
        with torch.no_grad():
            feats = torch.cat([self.model.features(self._prepare(train.to_unit_float(images[i:i + batch_size])))
                               for i in range(0, len(images), batch_size)])
        num_classes = self.model.head.out_features
        self.means, self.precision, lam = fit_class_gaussians(feats, labels, num_classes, shrinkage)
        self.meta["shrinkage"] = lam
        return self

    def criterion(self, images: Tensor, labels: Tensor, kind: str) -> Tensor:
        if kind == "hardness" and self.means.numel() == 0:
            raise ValueError("call fit_gaussians(real_images, real_labels) before using the hardness criterion.")
        feats = self.model.features(self._prepare(images))
        logits = self.model.head(feats)
        return criterion_values(kind, logits, labels, feats, self.means, self.precision)

    # ---- persistence
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.float() for k, v in self.state_dict().items()}, path / "classifier.pt")
        (path / "ltkit.json").write_text(json.dumps(dict(format="ltkit.feedback-classifier/1",
                                                         input_size=self.input_size, **self.meta), indent=1))
        return path

    @classmethod
    def from_run(cls, run: dict | str | Path, data=None, shrinkage: float | None = None) -> "FeedbackClassifier":
        """The classifier of a finished ltkit run (a record or its folder), with Gaussians of its real data."""
        trained = train.load_trained(run if not isinstance(run, dict) else run["dir"], data)
        record, config, data, model, loss_fn = trained.record, trained.config, trained.data, trained.model, trained.loss_fn
        if record["result"] is None:
            raise ValueError(f"the run {record['dir']} has not finished: train it to the end first.")
        meta = dict(model=config.model, num_classes=data.num_classes, in_channels=data.image_shape[0],
                    image_size=data.image_shape[1], model_params=dict(config.model_params),
                    cosine_head=loss_fn.needs_cosine_head, dataset=config.dataset, loss=config.loss,
                    epochs=config.epochs, seed=config.seed,
                    test_accuracy={k: record["result"][k] for k in ("overall", "many", "medium", "few", "worst")})
        classifier = cls(model, meta=meta)
        if getattr(data, "x_train", None) is not None:
            return classifier.fit_gaussians(data.x_train, data.y_train, shrinkage)
        return classifier.fit_gaussians_files(data.train, config, shrinkage)

    def fit_gaussians_files(self, dataset, config, shrinkage: float | None = None,
                            device: str | None = None) -> "FeedbackClassifier":
        """The class Gaussians from a split-file data set (ImageNet-LT scale), read with the test transforms."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dataset.transform = train.file_transforms(config, train=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=config.num_workers)
        self.to(device)
        feats, labels = [], []
        with torch.no_grad():
            for x, y in loader:
                feats.append(self.model.features(x.to(device)).float().cpu())
                labels.append(y)
        self.means, self.precision, lam = fit_class_gaussians(torch.cat(feats), torch.cat(labels),
                                                              self.model.head.out_features, shrinkage)
        self.means, self.precision = self.means.to(device), self.precision.to(device)
        self.meta["shrinkage"] = lam
        return self


def train_feedback_classifier(out_dir: str | Path = "runs", seed: int = 0, shrinkage: float | None = None,
                              **overrides: Any) -> FeedbackClassifier:
    """Train the frozen feedback classifier on ``digits-lt`` with plain CE (ERM) through the engine."""
    params = dict(loss="ce", seed=seed, out_dir=str(out_dir), name=f"feedback-classifier-s{seed}",
                  if_exists="resume", progress=False, **overrides)
    record = train.fit("digits-lt", **params)
    return FeedbackClassifier.from_run(record, shrinkage=shrinkage)


def load_feedback_classifier(path_or_name: str | Path = "digits-lt", device: str = "cpu") -> FeedbackClassifier:
    """Load a saved feedback classifier (a folder, or the committed ``"digits-lt"`` one)."""
    from .. import models

    path = Path(path_or_name)
    if isinstance(path_or_name, str) and path_or_name in CLASSIFIER_CHECKPOINTS:
        path = CHECKPOINT_DIR / CLASSIFIER_CHECKPOINTS[path_or_name]
    if not (path / "classifier.pt").is_file() or not (path / "ltkit.json").is_file():
        raise FileNotFoundError(
            f"no feedback classifier at {path} (expected classifier.pt and ltkit.json). Committed: "
            f"{', '.join(CLASSIFIER_CHECKPOINTS)}; make one with ltkit.methods.feedback.train_feedback_classifier().save(path).")
    meta = json.loads((path / "ltkit.json").read_text())
    model = models.make_model(meta["model"], meta["num_classes"], in_channels=meta["in_channels"],
                              image_size=meta["image_size"], cosine_head=meta.get("cosine_head", False),
                              **meta.get("model_params", {}))
    state = torch.load(path / "classifier.pt", map_location="cpu", weights_only=True)
    input_size = meta.get("input_size")
    meta = {k: v for k, v in meta.items() if k not in ("format", "input_size")}
    classifier = FeedbackClassifier(model, state["means"], state["precision"], input_size, meta)
    classifier.load_state_dict(state)
    return classifier.to(device)


# =========================================================================== the guidance step
def normalised_step(grad: Tensor, x: Tensor, scale: float, eps: float = 1e-12) -> Tensor:
    """``s · ‖x_i‖ · g_i / (‖g_i‖ + eps)`` per sample ``i`` (norms over all but the batch dim, float32)."""
    g, x = grad.float(), x.float()
    g_norm = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    x_norm = x.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    return scale * x_norm * g / (g_norm + eps)


def _check_finite(value: Tensor, what: str, step: int, t: int) -> None:
    bad = ~torch.isfinite(value.flatten(1) if value.dim() > 1 else value[:, None]).all(1)
    if bad.any():
        raise ValueError(
            f"the feedback {what} is NaN or inf at DDIM step {step} (t={t}) for samples "
            f"{torch.nonzero(bad).flatten().tolist()[:10]}: the classifier or decoder produced non-finite values. "
            "Compute the criterion in float32, lower the feedback scale s, or check the inputs (noise, labels, "
            "classifier weights).")


def minmax_rescale(images: Tensor) -> Tensor:
    """Each image shifted and scaled to [0, 1] by its own minimum and maximum, both detached (the released
    ``process_image``; a constant image stays at 0 instead of dividing by zero)."""
    lo = images.detach().flatten(1).min(1).values.view(-1, *([1] * (images.dim() - 1)))
    shifted = images - lo
    hi = shifted.detach().flatten(1).max(1).values.view(-1, *([1] * (images.dim() - 1)))
    return shifted / hi.clamp_min(1e-12)


def _criterion_gradient(x_in: Tensor, out: Tensor, alpha_bar: Tensor, prediction_type: str, labels: Tensor,
                        criterion: Callable[[Tensor, Tensor], Tensor], decode: Callable[[Tensor], Tensor],
                        blend: bool, rescale: bool, step: int, t: int) -> tuple[Tensor, Tensor]:
    """``(∇_{x_t} C, C)`` from the network output ``out`` at ``x_in`` (in the graph of ``x_in``)."""
    x0 = predicted_x0(x_in, out, alpha_bar, prediction_type)
    if blend:
        f = (1 - alpha_bar).sqrt()
        x0 = f * x0 + (1 - f) * x_in
    images = decode(x0).float()
    if rescale:
        images = minmax_rescale(images)
    value = criterion(images, labels).float()
    _check_finite(value, "criterion", step, t)
    (grad,) = torch.autograd.grad(value.sum(), x_in)
    _check_finite(grad, "gradient", step, t)
    return grad, value.detach()


def feedback_gradient(unet, scheduler, x: Tensor, t: Tensor, cond: dict, labels: Tensor,
                      criterion: Callable[[Tensor, Tensor], Tensor], decode: Callable[[Tensor], Tensor],
                      blend: bool = False, step: int = 0, *, rescale: bool = False) -> tuple[Tensor, Tensor]:
    """``(∇_{x_t} C, C)`` with ``C = criterion(decode(x̂0(x_t)), y)`` per sample, all in float32.

    ``x̂0`` comes from the conditional prediction ``ε_θ(x_t, t, y)``; ``blend``: ``f x̂0 + (1 - f) x_t``
    with ``f = sqrt(1 - ᾱ_t)``; ``rescale``: the decoded images min–max rescaled (:func:`minmax_rescale`).
    """
    alpha_bar = scheduler.alphas_cumprod.to(x.device)[t].float()
    dtype = next(unet.parameters()).dtype
    x_in = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        out = unet(scheduler.scale_model_input(x_in, t).to(dtype), t, **cond).sample.float()
        return _criterion_gradient(x_in, out, alpha_bar, scheduler.config.prediction_type, labels, criterion,
                                   decode, blend, rescale, step, int(t))


def released_guidance(unet, scheduler, x: Tensor, t: Tensor, cond: dict, uncond: dict, cfg_scale: float,
                      labels: Tensor, criterion: Callable[[Tensor, Tensor], Tensor],
                      decode: Callable[[Tensor], Tensor], blend: bool = True, step: int = 0, *,
                      rescale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """``(∇_{x_t} C, C, ε)``: the feedback gradient and the CFG noise at ``x_t`` from one conditional prediction.

    The released sampler predicts the classifier-free guided noise at ``x_t``, differentiates the
    criterion through the conditional prediction at the same ``x_t``, moves ``x_t`` and steps with the
    noise predicted before the move.  The conditional prediction is the same in both places, so it is
    made once (with gradients) and the unconditional one without: two network evaluations of ``B``
    images instead of three (``B`` for the gradient, ``2B`` for the noise at the moved point).
    """
    alpha_bar = scheduler.alphas_cumprod.to(x.device)[t].float()
    dtype = next(unet.parameters()).dtype
    x_in = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        out = unet(scheduler.scale_model_input(x_in, t).to(dtype), t, **cond).sample.float()
        grad, value = _criterion_gradient(x_in, out, alpha_bar, scheduler.config.prediction_type, labels,
                                          criterion, decode, blend, rescale, step, int(t))
    with torch.no_grad():
        uncond_out = unet(scheduler.scale_model_input(x.float(), t).to(dtype), t, **uncond).sample.float()
        noise = uncond_out + cfg_scale * (out.detach() - uncond_out)
    return grad, value, noise


def feedback_hook(unet, scheduler, cond: dict, labels: Tensor, criterion: Callable[[Tensor, Tensor], Tensor],
                  guidance: Guidance | None, decode: Callable[[Tensor], Tensor], log: list | None = None, *,
                  uncond: dict, cfg_scale: float) -> Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor] | None] | None:
    """A ``guide`` hook for :func:`ltkit.methods.diffusion.ddim_loop` (``None`` when there is nothing to do).

    At a guided step it returns the moved ``x_t`` and the CFG noise the DDIM step uses: the noise
    predicted before the move (``mode="released"``, :func:`released_guidance`) or at the moved point
    (``mode="re-evaluate"``); at other steps ``None`` (the plain step).  ``log`` (a list) receives
    ``(step, t, criterion values)`` at every guided step.
    """
    if guidance is None or guidance.scale == 0:
        return None

    def hook(i: int, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor] | None:
        if not guidance.applies(i):
            return None
        if guidance.reuses_noise:
            grad, value, noise = released_guidance(unet, scheduler, x, t, cond, uncond, cfg_scale, labels, criterion,
                                                   decode, guidance.blend, i, rescale=guidance.rescale)
            x = x + normalised_step(grad, x, guidance.scale, guidance.eps)
        else:
            grad, value = feedback_gradient(unet, scheduler, x, t, cond, labels, criterion, decode, guidance.blend, i,
                                            rescale=guidance.rescale)
            x = x + normalised_step(grad, x, guidance.scale, guidance.eps)
            noise = diffusion.cfg_noise(unet, scheduler.scale_model_input(x, t), t, cond, uncond, cfg_scale)
        if log is not None:
            log.append((i, int(t), value.cpu()))
        return x, noise

    return hook


def _criterion_fn(classifier: FeedbackClassifier | Callable, kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    if isinstance(classifier, FeedbackClassifier):
        return lambda images, labels: classifier.criterion(images, labels, kind)
    if callable(classifier):
        return classifier
    raise TypeError(f"classifier must be a FeedbackClassifier or a callable (images, labels) -> values, "
                    f"got {type(classifier).__name__}.")


def guided_sample(model: ClassDiffusion, labels: Tensor | Sequence[int], classifier=None,
                  guidance: Guidance | None = None, *, steps: int = 10, cfg_scale: float = 2.0, seed: int = 0,
                  noise: Tensor | None = None, record: bool = False, log: list | None = None):
    """Feedback-guided DDIM samples (in [0, 1]) of the pixel-space model; ``guidance=None`` or ``s = 0``:
    the plain sampler.  ``record=True`` returns the :class:`~ltkit.methods.diffusion.DDIMTrajectory`."""
    labels = model.check_labels(labels)
    hook = None
    if guidance is not None and guidance.scale > 0:
        if classifier is None:
            raise ValueError("feedback guidance needs a classifier (e.g. load_feedback_classifier()).")
        hook = feedback_hook(model.unet, model.ddim_scheduler(), dict(class_labels=labels), labels,
                             _criterion_fn(classifier, guidance.criterion), guidance,
                             decode=lambda x0: (x0 + 1) / 2, log=log,
                             uncond=dict(class_labels=torch.full_like(labels, model.null_class)), cfg_scale=cfg_scale)
    with torch.no_grad():
        return model.sample(labels, steps=steps, cfg_scale=cfg_scale, seed=seed, noise=noise, guide=hook,
                            record=record)


# =========================================================================== a diffusers pipeline on disk
def pipeline_feedback_sample(pipe, labels: Tensor | Sequence[int], classifier, guidance: Guidance | None = None, *,
                             prompts: Sequence[str] | None = None, negative_prompt: str | None = None,
                             prompt_embeds: Tensor | None = None, negative_prompt_embeds: Tensor | None = None,
                             cond: dict | None = None, uncond: dict | None = None, steps: int = 30,
                             cfg_scale: float = 3.0, seed: int = 0, latents: Tensor | None = None,
                             progress: bool = True) -> Tensor:
    """Feedback-guided DDIM with a (latent) diffusers pipeline: returns decoded images in [0, 1].

    ``pipe`` needs ``unet``, ``scheduler`` and (for latent models) ``vae``;
    the scheduler is replaced by a DDIM one with the same noise schedule.
    Conditioning, in order of preference: ``cond`` / ``uncond`` (keyword
    arguments of the UNet), ``prompt_embeds`` / ``negative_prompt_embeds``, or
    ``prompts`` (encoded with ``pipe.encode_prompt``).  ``x̂0`` is decoded by the
    VAE (``vae.decode(z / scaling_factor)``) before ``classifier`` — a
    :class:`FeedbackClassifier` (with ``input_size``) or a callable
    ``(images in [0, 1], labels) -> values``.  The network may run in float16;
    the criterion, its gradient and the norms are float32.
    """
    from diffusers import DDIMScheduler

    unet, vae = pipe.unet, getattr(pipe, "vae", None)
    device = next(unet.parameters()).device
    labels = torch.as_tensor(labels).long().to(device)
    cond, uncond = _pipeline_conditioning(pipe, len(labels), device, prompts, negative_prompt, prompt_embeds,
                                          negative_prompt_embeds, cond, uncond)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if latents is None:
        latents = torch.randn((len(labels), unet.config.in_channels, *size),
                              generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    decode = _vae_decoder(vae)
    hook = None
    if guidance is not None and guidance.scale > 0:
        hook = feedback_hook(unet, scheduler, cond, labels, _criterion_fn(classifier, guidance.criterion),
                             guidance, decode, uncond=uncond, cfg_scale=cfg_scale)
    with torch.no_grad():
        z0 = diffusion.ddim_loop(unet, scheduler, latents.to(device), cond, uncond, steps=steps,
                                 cfg_scale=cfg_scale, guide=hook, progress=progress)
        return decode(z0).clamp(0, 1)


def _pipeline_conditioning(pipe, n: int, device, prompts, negative_prompt, prompt_embeds, negative_prompt_embeds,
                           cond, uncond) -> tuple[dict, dict]:
    if cond is not None or uncond is not None:
        if cond is None or uncond is None:
            raise ValueError("pass both cond and uncond (keyword arguments of the UNet for the two CFG branches).")
        return cond, uncond
    if prompt_embeds is None and prompts is not None:
        if not hasattr(pipe, "encode_prompt"):
            raise ValueError("this pipeline has no encode_prompt: pass prompt_embeds / negative_prompt_embeds.")
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} labels: pass one prompt per image.")
        prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(list(prompts), device, 1, True, negative_prompt)
    if prompt_embeds is None or negative_prompt_embeds is None:
        raise ValueError("conditioning missing: pass prompts, prompt_embeds + negative_prompt_embeds, or cond + uncond.")
    if len(prompt_embeds) != n or len(negative_prompt_embeds) != n:
        raise ValueError(f"prompt_embeds and negative_prompt_embeds need one row per image ({n}).")
    return dict(encoder_hidden_states=prompt_embeds), dict(encoder_hidden_states=negative_prompt_embeds)


def _vae_decoder(vae) -> Callable[[Tensor], Tensor]:
    if vae is None:
        return lambda z: (z.float() + 1) / 2
    scaling = getattr(vae.config, "scaling_factor", 1.0)
    dtype = next(vae.parameters()).dtype
    return lambda z: (vae.decode((z / scaling).to(dtype)).sample.float() + 1) / 2


def pipeline_fill(pipe, class_counts: Sequence[int], prompt: Callable[[int], str], classifier,
                  guidance: Guidance | None, out_dir: str | Path, *, target: int | None = None,
                  negative_prompt: str | None = None, steps: int = 30, cfg_scale: float = 3.0, batch_size: int = 8,
                  seed: int = 0, image_size: int | None = None, progress: bool = True) -> Path:
    """Paper scale: fill every class with a latent pipeline, writing PNGs and a split file.

    Image ``k`` of class ``c`` goes to ``out_dir/<c>/<k>.png`` (started from
    noise seeded by ``(seed, c, k)``; files that exist are skipped, so an
    interrupted fill resumes), and ``out_dir/synthetic_train.txt`` lists
    ``<c>/<k>.png c`` lines in the ImageNet-LT split-file format — the
    ``synthetic`` parameter of the ``feedback-fill`` method.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    needed = fill_counts(class_counts, target)
    jobs = [(c, k) for c, n in enumerate(needed) for k in range(n)]
    todo = [(c, k) for c, k in jobs if not (out_dir / str(c) / f"{k}.png").is_file()]
    unet = pipe.unet
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    for start in tqdm(range(0, len(todo), batch_size), desc="synthesising", disable=not progress):
        chunk = todo[start:start + batch_size]
        labels = torch.tensor([c for c, _ in chunk])
        seeds = _image_seeds(seed, labels, torch.tensor([k for _, k in chunk]))
        latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        images = pipeline_feedback_sample(pipe, labels, classifier, guidance, prompts=[prompt(c) for c, _ in chunk],
                                          negative_prompt=negative_prompt, steps=steps, cfg_scale=cfg_scale,
                                          latents=latents, progress=False)
        for (c, k), image in zip(chunk, images):
            array = (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            picture = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
            if image_size:
                picture = picture.resize((image_size, image_size), Image.BICUBIC)
            (out_dir / str(c)).mkdir(parents=True, exist_ok=True)
            picture.save(out_dir / str(c) / f"{k}.png")
    split = out_dir / "synthetic_train.txt"
    split.write_text("".join(f"{c}/{k}.png {c}\n" for c, k in jobs))
    return split


# =========================================================================== filling
def fill_counts(class_counts: Sequence[int], target: int | None = None) -> list[int]:
    """Synthetic images per class: ``max(N_target - n_c, 0)``; ``N_target`` defaults to the largest class."""
    counts = [int(c) for c in class_counts]
    if not counts or min(counts) < 0:
        raise ValueError(f"class_counts must be non-negative counts, got {counts}.")
    target = max(counts) if target is None else target
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 0:
        raise ValueError(f"target={target!r} must be a non-negative integer (images per class after filling).")
    return [max(int(target) - c, 0) for c in counts]


def _image_seeds(seed: int, labels: Tensor, ranks: Tensor) -> Tensor:
    return (seed * 1_000_003 + labels) * 100_003 + ranks


@dataclass
class SyntheticSet:
    """Synthetic images (``uint8``, like the real data), their labels, and how they were made."""

    x: Tensor
    y: Tensor
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4 or self.y.dim() != 1 or len(self.x) != len(self.y):
            raise ValueError(f"a SyntheticSet needs uint8 images (N, C, H, W) and N labels; got {self.x.dtype} "
                             f"{tuple(self.x.shape)} and {tuple(self.y.shape)}.")

    def __len__(self) -> int:
        return len(self.y)

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.y, minlength=num_classes).tolist()

    def fingerprint(self) -> str:
        return hashlib.sha1(self.x.numpy().tobytes() + self.y.numpy().tobytes()).hexdigest()

    def to_dataset(self) -> torch.utils.data.TensorDataset:
        """A ``TensorDataset`` of float images in [0, 1] and labels."""
        return torch.utils.data.TensorDataset(train.to_unit_float(self.x), self.y)

    def combined_with(self, real):
        """A :class:`ltkit.data.TensorData`: real + synthetic training images, the real test set."""
        from ..data import TensorData

        return TensorData(f"{real.name}+synthetic", torch.cat([real.x_train, self.x]), torch.cat([real.y_train, self.y]),
                          real.x_test, real.y_test, list(real.classes), dict(real.info, synthetic=self.info))

    def refill(self, real_counts: Sequence[int], target: int) -> "SyntheticSet":
        """The fill for a smaller ``target``: the first ``max(target - n_c, 0)`` images of each class.

        Images of a class are stored in the order of their seeds ``(seed, c, k)``, so this is exactly
        the set :func:`synthesize_fill` would make with ``target``.
        """
        needed = fill_counts(real_counts, target)
        have = self.class_counts(len(needed))
        if any(n > h for n, h in zip(needed, have)):
            raise ValueError(f"target={target} needs {needed} synthetic images per class but this set has {have}.")
        keep = torch.cat([torch.nonzero(self.y == c).flatten()[:n] for c, n in enumerate(needed)])
        return SyntheticSet(self.x[keep], self.y[keep], dict(self.info, counts=needed, target=target))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(x=self.x, y=self.y, info=json.dumps(self.info)), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SyntheticSet":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no synthetic set at {path}: make one with ltkit.methods.feedback.synthesize_fill(...)"
                                    ".save(path).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(state["x"], state["y"].long(), json.loads(state["info"]))


def synthesize_fill(model: ClassDiffusion, class_counts: Sequence[int], classifier=None,
                    guidance: Guidance | None = None, *, target: int | None = None, steps: int = 10,
                    cfg_scale: float = 2.0, batch_size: int = 256, seed: int = 0,
                    progress: bool = True) -> SyntheticSet:
    """Synthesise ``max(N_target - n_c, 0)`` images of every class ``c`` (batched, seeded per image)."""
    needed = fill_counts(class_counts, target)
    if len(needed) != model.num_classes:
        raise ValueError(f"class_counts has {len(needed)} classes but the model knows {model.num_classes}.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(needed)])
    ranks = torch.cat([torch.arange(n) for n in needed])
    images = []
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(labels), batch_size), desc="synthesising", disable=not progress, leave=False):
        y = labels[start:start + batch_size]
        noise = model.initial_noise(len(y), _image_seeds(seed, y, ranks[start:start + batch_size]))
        x = guided_sample(model, y, classifier, guidance, steps=steps, cfg_scale=cfg_scale, noise=noise)
        images.append((x * 255).round().to(torch.uint8).cpu())
    x = torch.cat(images) if images else torch.zeros((0, *model.image_shape), dtype=torch.uint8)
    info = dict(counts=needed, target=max(class_counts) if target is None else target, steps=steps,
                cfg_scale=cfg_scale, seed=seed, guidance=asdict(guidance) if guidance else None,
                generator=model.info.get("variant", model.info.get("dataset")),
                classifier=getattr(classifier, "meta", {}).get("dataset") if classifier is not None else None)
    return SyntheticSet(x, labels, info)


# =========================================================================== training with the fill
@dataclass(frozen=True)
class FeedbackFillParams:
    """The fill's parameters (``config.method_params``); see :class:`FeedbackFill`."""

    synthetic: str | None = None
    real_fraction: float = param(0.5, low=0, high=1, low_open=True, hint="0.5 = half real, half synthetic")
    prior: str = param("real", choices=("real", "mixed"), hint="'real': the run's loss; 'mixed': BS with the "
                                                                "mixed batches' prior")

    def check(self) -> None:
        if not self.synthetic:
            raise checks.InputError(
                "feedback-fill needs method_params={'synthetic': <path of a saved SyntheticSet (.pt) or a split file "
                "(.txt), or a committed fill such as 'committed:digits-lt/loss'>} (made with "
                "ltkit.methods.feedback.synthesize_fill(...).save(path)).")
        resolve_synthetic(self.synthetic)  # a committed reference must name a committed fill


@train.register_method
class FeedbackFill(train.Method):
    """50 % real / 50 % synthetic mini-batches (see the module docstring).

    Params: ``synthetic``: a saved :class:`SyntheticSet` (``.pt``, for tensor
    data sets such as ``digits-lt``), a committed fill of ``digits-lt`` named
    ``"committed:<generator>/<fill>"`` (e.g. ``"committed:digits-lt/loss"``, see
    :func:`committed_fill`; the run record keeps the name, not a path into the
    installed package, so a run trained on one machine is reused on another) or,
    at ImageNet-LT / Places-LT scale, a split file (``.txt``, paths relative to
    its folder, as written by :func:`pipeline_fill`); ``real_fraction``: share of real images per batch
    (default 0.5); ``prior``: ``"real"`` (the run's loss, built by the engine
    from the real counts: with ``loss="bs"`` Balanced Softmax with the real
    long-tailed prior, the paper) or ``"mixed"`` (Balanced Softmax with the
    class distribution of the mixed batches, replacing the run's loss).
    """

    name = "feedback-fill"
    Params = FeedbackFillParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.path = str(resolve_synthetic(self.params.synthetic))  # config keeps the reference; this is where it is
        self.real_fraction, self.prior = self.params.real_fraction, self.params.prior
        self.files = self.path.endswith(".txt")
        self.fingerprint = ""

    def setup(self, ctx: train.Context) -> None:
        if self.files:
            self._setup_files(ctx)
        else:
            self._setup_tensors(ctx)
        if len(self.y) == 0:
            raise ValueError(f"the synthetic set {self.path} is empty (were the classes already uniform?).")
        if int(self.y.max()) >= ctx.data.num_classes:
            raise ValueError(f"synthetic labels go up to {int(self.y.max())} but the data set has "
                             f"{ctx.data.num_classes} classes.")
        self.syn_counts = torch.bincount(self.y.cpu(), minlength=ctx.data.num_classes).tolist()
        if self.prior == "mixed":
            self.log_prior = self._mixed_log_prior(ctx).to(ctx.device)

    def _setup_tensors(self, ctx: train.Context) -> None:
        if ctx.train_x is None:
            raise ValueError("a SyntheticSet (.pt) goes with tensor data sets; with split-file data pass a split file "
                             "(.txt) of synthetic images (ltkit.methods.feedback.pipeline_fill writes one).")
        synthetic = SyntheticSet.load(self.path)
        if synthetic.x.shape[1:] != ctx.train_x.shape[1:]:
            raise ValueError(f"synthetic images have shape {tuple(synthetic.x.shape[1:])} but the training images "
                             f"{tuple(ctx.train_x.shape[1:])}.")
        self.fingerprint = synthetic.fingerprint()
        self.x, self.y = synthetic.x.to(ctx.device), synthetic.y.to(ctx.device)

    def _setup_files(self, ctx: train.Context) -> None:
        from ..data import ImageListDataset

        if ctx.train_x is not None:
            raise ValueError("a split file of synthetic images goes with split-file data sets; for tensor data sets "
                             "save a SyntheticSet (.pt).")
        split = Path(self.path)
        if not split.is_file():
            raise FileNotFoundError(f"no synthetic split file at {split}: write one with ltkit.methods.feedback.pipeline_fill.")
        self.dataset = ImageListDataset(split.parent, split, ctx.file_transform(train=True))
        self.fingerprint = hashlib.sha1(split.read_bytes()).hexdigest()
        self.y = torch.tensor(self.dataset.targets, device=ctx.device)

    def _mixed_log_prior(self, ctx: train.Context) -> Tensor:
        labels = torch.as_tensor(ctx.train_y.cpu() if ctx.train_y is not None else ctx.data.train.targets)
        real_draw = train.epoch_order(ctx.config, labels, ctx.class_counts, 0)
        real = torch.bincount(labels[real_draw], minlength=ctx.data.num_classes).double()
        syn = torch.tensor(self.syn_counts, dtype=torch.float64)
        f = self.real_fraction
        mixed = f * real / real.sum() + (1 - f) * syn / syn.sum()
        return mixed.clamp_min(1e-12).log().float()

    def epoch_start(self, ctx: train.Context, epoch: int) -> None:
        self.order = ctx.permutation(len(self.y), "feedback-order", epoch)  # the epoch's pass over the fill
        self.position = 0

    def synthetic_count(self, n_real: int) -> int:
        return round(n_real * (1 - self.real_fraction) / self.real_fraction)

    def batch(self, ctx: train.Context, batch: train.Batch) -> train.Batch:
        """Append this rank's share of the global batch's synthetic images (the next ones of the epoch's pass)."""
        k = self.synthetic_count(batch.global_size or len(batch.y))
        if k == 0:
            return batch
        positions = self.order[(self.position + torch.arange(k)) % len(self.order)]
        self.position += k
        source = self.dataset if self.files else self.x
        x = ctx.images(positions, ctx.generator("feedback-augment", ctx.epoch, batch.step), source=source)
        y = self.y[ctx.local(positions).to(self.y.device)].to(batch.y.device)
        index = batch.index if batch.index is not None else torch.full_like(batch.y, -1)
        return dataclasses.replace(batch, x=torch.cat([batch.x, x.to(batch.x.dtype)]), y=torch.cat([batch.y, y]),
                                   index=torch.cat([index, torch.full_like(y, -1)]))

    def loss(self, ctx: train.Context, batch: train.Batch) -> Tensor | None:
        if self.prior == "real":
            return None
        return F.cross_entropy(ctx.model(batch.x).float() + self.log_prior, batch.y)

    def state_dict(self) -> dict:
        return dict(synthetic=self.fingerprint)

    def load_state_dict(self, state: dict) -> None:
        if state.get("synthetic") != self.fingerprint:
            raise ValueError(f"the synthetic set {self.path} differs from the one this run was trained with: "
                             "resume with the same set, or start a new run.")


# =========================================================================== the committed artefacts
COMMITTED_PREFIX = "committed:"


def synthetic_set_path(generator: str = "digits-lt", fill: str = "entropy") -> Path:
    """Where the committed fill of ``digits-lt`` made by ``generator`` with ``fill`` (``"s0"`` or a criterion) is."""
    if generator not in diffusion.CHECKPOINTS or fill not in FILL_LABELS:
        raise checks.InputError(f"committed fills: generator in {list(diffusion.CHECKPOINTS)}, fill in "
                                f"{list(FILL_LABELS)}; got {generator!r}, {fill!r}.")
    return SYNTHETIC_DIR / f"{generator}-{fill}.pt"


def committed_fill(generator: str = "digits-lt", fill: str = "entropy") -> str:
    """The reference ``"committed:<generator>/<fill>"`` to a committed fill, for ``method_params={"synthetic": ...}``.

    ``feedback-fill`` resolves it with :func:`synthetic_set_path` where the run trains, so the
    run record holds this machine-independent name rather than a path into the installed package
    (a run trained on one machine is then reused on another with the same config).
    """
    synthetic_set_path(generator, fill)  # checks the names
    return f"{COMMITTED_PREFIX}{generator}/{fill}"


def resolve_synthetic(synthetic: str | Path) -> Path:
    """The file behind ``feedback-fill``'s ``synthetic`` parameter: a ``"committed:<generator>/<fill>"``
    reference (:func:`committed_fill`) resolved with :func:`synthetic_set_path`, anything else taken as a path."""
    text = str(synthetic)
    if not text.startswith(COMMITTED_PREFIX):
        return Path(text)
    generator, slash, fill = text[len(COMMITTED_PREFIX):].partition("/")
    if not slash:
        raise checks.InputError(f"synthetic={text!r}: a committed fill is named 'committed:<generator>/<fill>', "
                                f"e.g. {COMMITTED_PREFIX}digits-lt/loss (generators {list(diffusion.CHECKPOINTS)}, "
                                f"fills {list(FILL_LABELS)}).")
    return synthetic_set_path(generator, fill)


def fill_guidance(fill: str, scale: float | None = None, every: int | None = None,
                  mode: str | None = None) -> Guidance | None:
    """The guidance of a fill label: ``"s0"`` -> None, a criterion -> the quick settings' scale, frequency and
    sampler (``mode``; :data:`QUICK_SETTINGS` uses ``"re-evaluate"``, the sampler the committed fills were made with)."""
    checks.choice("fill", fill, FILL_LABELS)
    if fill == "s0":
        return None
    quick = QUICK_SETTINGS["guidance"]
    return Guidance(fill, quick.scale if scale is None else scale, quick.every if every is None else every,
                    quick.mode if mode is None else mode)


def make_committed(out_dir: str | Path = CHECKPOINT_DIR, generators: Sequence[str] = tuple(diffusion.CHECKPOINTS),
                   classifier: bool = True, runs_dir: str | Path = "runs", progress: bool = True) -> list[Path]:
    """Re-create the committed feedback classifier (``classifier=True``) and synthetic fills under ``out_dir``.

    The fills: the full fill of ``digits-lt`` (891 images) per generator and per label of
    :data:`FILL_LABELS`, with :data:`QUICK_SETTINGS` and seed 0, written to ``out_dir/synthetic/``.
    Generators and classifier are read from ``out_dir`` when they are there (after
    :func:`ltkit.methods.diffusion.make_checkpoints`), else the committed ones are used.
    """
    from .. import data as ltdata

    out_dir = Path(out_dir)
    classifier_dir = out_dir / CLASSIFIER_CHECKPOINTS["digits-lt"]
    if classifier:
        train_feedback_classifier(runs_dir).save(classifier_dir)
    clf = load_feedback_classifier(classifier_dir if classifier_dir.is_dir() else "digits-lt")
    counts = ltdata.load_digits_lt().class_counts
    written = []
    for generator in generators:
        generator_dir = out_dir / diffusion.CHECKPOINTS[generator]
        model = diffusion.load_diffusion(generator_dir if generator_dir.is_dir() else generator)
        for fill in FILL_LABELS:
            synthetic = synthesize_fill(model, counts, clf, fill_guidance(fill), steps=QUICK_SETTINGS["steps"],
                                        cfg_scale=QUICK_SETTINGS["cfg_scale"], progress=progress)
            written.append(synthetic.save(out_dir / "synthetic" / f"{generator}-{fill}.pt"))
    return written
