r"""``context-digits-lt``: a bundled data set in which the tail is seen in too few contexts.

CMO (Park et al., "The Majority Can Help the Minority: Context-rich Minority
Oversampling for Long-tailed Classification", CVPR 2022) argues that minority
classes suffer not only from having few images but from having few *contexts*:
a rare bird photographed only on grass.  This data set makes that claim
visible and measurable on a CPU.

Construction (deterministic, nothing downloaded)
------------------------------------------------
* **Foregrounds** are the real digit glyphs of ``digits-lt``
  (:func:`ltkit.data.load_digits_lt`: the same long-tailed training subset and
  the same balanced 30-per-class test glyphs), resized (bilinear) to
  ``glyph_size``, given a random light colour (HSV: any hue, saturation
  ≤ 0.3, value ≥ 0.95) and placed at a random position.  Composition is alpha
  blending with the glyph's intensity ``a`` as alpha:
  ``x = a·colour + (1 - a)·background``.
* **Backgrounds** come from a family of ``num_backgrounds`` kinds
  (:data:`BACKGROUND_KINDS`: plain, horizontal / vertical stripes,
  checkerboard, blocky noise, diagonal stripes, gradient, dots), each with its
  own dark base colour and per-image jitter (colour, phase, angle): a
  background *kind* is a recognisable context, like "sky" or "grass".  The
  pattern alternates the base colour with a shade ``1 - contrast`` as bright.
* **Image size.**  **Choice**: 8 × 8 by default (``image_size``), like
  ``digits-lt``, with the glyph filling the image: the kit's small CNN
  (receptive field ≈ 10 pixels, global average pooling) then sees whole
  glyphs, and a 30-epoch run takes seconds on a CPU.  At 16 × 16 (glyph 12,
  random position) the small CNN needs far more than 30 epochs to learn the
  tail at all (measured: few-shot accuracy ≈ 0 after 30 epochs, even with
  every class on every background); 16 and 32 are there for the eye and for
  bigger models.
* **Context structure.** Class ``k`` is shown in training on ``m_k``
  background kinds: all ``K`` for the many-shot classes (``n_k > 100``), then
  interpolated on a log scale down to ``min_contexts`` for the smallest class:

  .. math::

      m_k = \operatorname{round}\Big(m_{\min} + (K - m_{\min})
            \min\Big(1, \frac{\log(n_k / n_{\min})}{\log(100 / n_{\min})}\Big)\Big)

  (for ``digits-lt``, ``K = 6``: ``6, 6, 5, 5, 4, 4, 3, 2, 2, 1`` — the head on
  every kind, the few-shot classes on one or two).  Class ``k``'s kinds are
  the ``m_k`` consecutive kinds starting at ``k mod K`` (so different tail
  classes own different contexts), and its images cycle through them in a
  seeded order.
* **Test set**: every test glyph composited on *every* background kind
  (``30 × K`` images per class; each (class, background) group holds 30
  images), from a fixed random stream, so that it does not change with
  ``seed``.

``info`` records the structure: ``background_kinds``, ``contexts`` (the kinds
of every class), ``train_backgrounds`` and ``test_backgrounds`` (one kind id
per image), ``test_glyph`` (which of the 300 test glyphs each test image is).

Measuring the context effect
----------------------------
This module holds the data only.  :func:`ltkit.context_analysis.group_accuracy_by_background`
(above the engine: it rebuilds trained runs) re-evaluates a trained run or a model
on the test set and returns the accuracy of every (class, background) group, the
**worst group**, and the mean accuracy on (class, background) pairs that were
**seen** in training against those that were **unseen** — the gap CMO is meant to
close.  :func:`ltkit.context_analysis.context_table` summarises several seeds per
method as ``mean ± std``.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import checks
from .data import TensorData, load_digits_lt

__all__ = [
    "BACKGROUND_KINDS",
    "contexts_per_class",
    "class_contexts",
    "render_background",
    "render_backgrounds",
    "composite",
    "load_context_digits_lt",
]

#: The background family, in order; ``num_backgrounds = K`` uses the first ``K``.
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "h-stripes", "v-stripes", "checker", "noise", "diagonal",
                                     "gradient", "dots")
# a dark base colour per kind (RGB in [0, 1]): a kind is a recognisable context, the light glyph stands out
_BASE_COLOURS = np.array([[0.12, 0.21, 0.45], [0.12, 0.33, 0.15], [0.42, 0.18, 0.12], [0.33, 0.30, 0.09],
                          [0.27, 0.15, 0.33], [0.09, 0.30, 0.33], [0.36, 0.27, 0.21], [0.21, 0.21, 0.24]])
DEFAULT_CONTRAST = 0.3
_TEST_STREAM_SEED = 20_220_621  # the test composites do not depend on ``seed``


# --------------------------------------------------------------------------- context structure
def contexts_per_class(counts: Sequence[int], num_backgrounds: int, min_contexts: int = 1,
                       head: int = 100) -> list[int]:
    """``m_k``: how many background kinds class ``k`` is shown on in training.

    Classes with more than ``head`` images (the many-shot group) get all ``K``
    kinds; below, ``m_k`` is interpolated on a log scale from ``K`` (at ``head``)
    down to ``min_contexts`` (at the smallest class), rounded half up.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not 1 <= min_contexts <= num_backgrounds:
        raise ValueError(f"min_contexts={min_contexts} must lie in [1, num_backgrounds={num_backgrounds}].")
    top = max(float(head), counts.min() * (1 + 1e-9))
    share = np.clip(np.log(counts / counts.min()) / np.log(top / counts.min()), 0, 1)
    m = np.floor(min_contexts + (num_backgrounds - min_contexts) * share + 0.5)
    return [int(v) for v in m]


def class_contexts(counts: Sequence[int], num_backgrounds: int, min_contexts: int = 1) -> list[list[int]]:
    """The background kinds of every class: ``m_k`` consecutive kinds starting at ``k mod K``."""
    m = contexts_per_class(counts, num_backgrounds, min_contexts)
    return [sorted((k + j) % num_backgrounds for j in range(m_k)) for k, m_k in enumerate(m)]


# --------------------------------------------------------------------------- rendering
def _kind_masks(kind: int, size: int, phase: np.ndarray, angle: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Blend masks in [0, 1], shape ``(n, size, size)``, for ``n`` backgrounds of one kind."""
    name = BACKGROUND_KINDS[kind]
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    i, j, phase = i[None], j[None], phase[:, None, None]
    period = max(2, size // 4)
    half = period // 2
    if name == "plain":
        mask = np.zeros((len(phase), size, size))
    elif name == "h-stripes":
        mask = (i + phase) % period < half
    elif name == "v-stripes":
        mask = (j + phase) % period < half
    elif name == "checker":
        mask = ((i + phase) // half + (j + phase) // half) % 2 == 0
    elif name == "diagonal":
        mask = (i + j + phase) % period < half
    elif name == "noise":  # 4x4 blocks of random shade
        block = math.ceil(size / 4)
        mask = np.repeat(np.repeat(cells, block, axis=1), block, axis=2)[:, :size, :size]
    elif name == "gradient":
        a = angle[:, None, None]
        mask = np.clip((np.cos(a) * (i - size / 2) + np.sin(a) * (j - size / 2)) / size + 0.5, 0, 1)
    else:  # dots
        dot = max(1, period // 3)
        mask = ((i + phase) % period < dot) & ((j + phase) % period < dot)
    return np.broadcast_to(np.asarray(mask, dtype=np.float64), (len(phase), size, size))


def render_backgrounds(kinds: Sequence[int], size: int, rng: np.random.Generator,
                       contrast: float = DEFAULT_CONTRAST) -> np.ndarray:
    """Backgrounds of the given kinds (indices into :data:`BACKGROUND_KINDS`): float ``(n, 3, size, size)``.

    A kind's two colours are its base colour (jittered per image) and a darker
    shade of it, ``(1 - contrast)`` times as bright; the pattern's phase (stripes, checks, dots), angle (gradient) and
    shades (noise) are random per image.
    """
    kinds = np.asarray(kinds, dtype=np.int64)
    n = len(kinds)
    base = _BASE_COLOURS[kinds]
    c1 = np.clip(base + rng.uniform(-0.07, 0.07, (n, 3)), 0, 1)
    c2 = c1 * (1.0 - contrast)
    phase = rng.integers(0, max(2, size // 4), n)
    angle = rng.uniform(0, 2 * np.pi, n)
    cells = rng.random((n, 4, 4))
    mask = np.empty((n, size, size))
    for kind in np.unique(kinds):
        rows = kinds == kind
        mask[rows] = _kind_masks(int(kind), size, phase[rows], angle[rows], cells[rows])
    return c1[:, :, None, None] * (1 - mask[:, None]) + c2[:, :, None, None] * mask[:, None]


def render_background(kind: int, size: int, rng: np.random.Generator, contrast: float = DEFAULT_CONTRAST) -> np.ndarray:
    """One background of kind ``kind``: float ``(3, size, size)`` in [0, 1]."""
    if not 0 <= kind < len(BACKGROUND_KINDS):
        raise ValueError(f"kind={kind} must index BACKGROUND_KINDS (0 .. {len(BACKGROUND_KINDS) - 1}).")
    return render_backgrounds([kind], size, rng, contrast)[0]


def _glyph_colours(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` light colours: random hue, saturation in [0, 0.3], value in [0.95, 1] (HSV -> RGB)."""
    h, s, v = rng.random(n), rng.uniform(0.0, 0.3, n), rng.uniform(0.95, 1.0, n)
    k = (np.array([5, 3, 1])[None, :] + 6 * h[:, None]) % 6
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def composite(glyphs: np.ndarray, backgrounds: np.ndarray, colours: np.ndarray, glyph_size: int,
              offsets: np.ndarray) -> np.ndarray:
    """Alpha-blend glyphs onto backgrounds: ``x = a·colour + (1 - a)·background``.

    Args:
        glyphs: ``(n, h, w)`` intensities in [0, 1], upsampled (bilinear) to ``glyph_size`` and used as alpha.
        backgrounds: ``(n, 3, S, S)``; colours: ``(n, 3)``; offsets: ``(n, 2)`` top-left corners (row, col).

    Returns:
        float ``(n, 3, S, S)`` in [0, 1].
    """
    size = backgrounds.shape[-1]
    alpha = F.interpolate(torch.as_tensor(glyphs, dtype=torch.float64)[:, None], size=(glyph_size, glyph_size),
                          mode="bilinear", align_corners=False)[:, 0].numpy().clip(0, 1)
    canvas = np.zeros((len(glyphs), size, size))
    for n, (dy, dx) in enumerate(np.asarray(offsets, dtype=np.int64)):
        canvas[n, dy:dy + glyph_size, dx:dx + glyph_size] = alpha[n]
    return colours[:, :, None, None] * canvas[:, None] + backgrounds * (1 - canvas[:, None])


def _render_set(glyphs: np.ndarray, kinds: np.ndarray, size: int, glyph_size: int,
                rng: np.random.Generator, contrast: float) -> np.ndarray:
    """uint8 ``(N, 3, S, S)``: glyph ``n`` on a fresh background of kind ``kinds[n]``."""
    backgrounds = render_backgrounds(kinds, size, rng, contrast)
    colours = _glyph_colours(len(glyphs), rng)
    offsets = rng.integers(0, size - glyph_size + 1, (len(glyphs), 2))
    return np.round(composite(glyphs, backgrounds, colours, glyph_size, offsets) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- the data set
def load_context_digits_lt(
    imbalance_factor: float = 15,
    n_max: int = 140,
    seed: int = 0,
    image_size: int = 8,
    num_backgrounds: int = 6,
    min_contexts: int = 1,
    glyph_size: int | None = None,
    contrast: float = DEFAULT_CONTRAST,
    profile: str = "exponential",
) -> TensorData:
    """``context-digits-lt``: ``digits-lt`` glyphs on backgrounds, the tail on few background kinds.

    Args:
        imbalance_factor, n_max, profile, seed: the ``digits-lt`` training subset
            (:func:`ltkit.data.load_digits_lt`); ``seed`` also drives the training
            composites (colours, positions, backgrounds).
        image_size: side ``S`` of the colour images (``>= 8``): 8 for the small CNN, 16 or 32 for the eye
            or bigger models.
        num_backgrounds: ``K``, how many kinds of :data:`BACKGROUND_KINDS` to use (2 .. 8).
        min_contexts: kinds the smallest class is shown on (1 .. K).
        glyph_size: side of the pasted glyph; default ``max(8, round(0.75 · S))`` (at most ``S``).
        contrast: texture contrast of the backgrounds in [0, 1] (0: flat colours; 1: black stripes).

    Returns:
        :class:`ltkit.data.TensorData` named ``"context-digits-lt"`` (uint8 ``(N, 3, S, S)``);
        ``info`` describes the context structure (see the module docstring).
    """
    image_size = checks.integer("image_size", image_size, low=8, hint="the glyphs are 8x8; try 16 or 32")
    num_backgrounds = checks.integer("num_backgrounds", num_backgrounds, low=2, high=len(BACKGROUND_KINDS),
                                     hint="how many background kinds")
    glyph_size = min(image_size, max(8, round(0.75 * image_size))) if glyph_size is None else glyph_size
    glyph_size = checks.integer("glyph_size", glyph_size, low=4, high=image_size, hint="at most image_size")
    contrast = checks.real("contrast", contrast, low=0, high=1, hint="0: flat colours, 1: black stripes")
    arrays, info = _build(float(imbalance_factor), int(n_max), int(seed), image_size, num_backgrounds,
                          int(min_contexts), glyph_size, float(contrast), profile)
    x_train, y_train, x_test, y_test = (torch.from_numpy(a.copy()) for a in arrays)  # fresh tensors every call
    return TensorData(name="context-digits-lt", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                      classes=[str(k) for k in range(10)], info=copy.deepcopy(info))


@functools.lru_cache(maxsize=8)
def _build(imbalance_factor: float, n_max: int, seed: int, image_size: int, num_backgrounds: int,
           min_contexts: int, glyph_size: int, contrast: float, profile: str) -> tuple[tuple[np.ndarray, ...], dict]:
    """The arrays and info of one configuration (cached: every training run asks for them again)."""
    digits = load_digits_lt(imbalance_factor=imbalance_factor, n_max=n_max, profile=profile, seed=seed)
    contexts = class_contexts(digits.class_counts, num_backgrounds, min_contexts)
    y_train, y_test = digits.y_train.numpy(), digits.y_test.numpy()

    rng = np.random.default_rng([seed, 7])
    train_kinds = np.empty(len(y_train), dtype=np.int64)
    for k, kinds in enumerate(contexts):
        members = np.flatnonzero(y_train == k)
        cycle = np.resize(np.asarray(kinds), len(members))  # balanced over the class's contexts
        train_kinds[members] = rng.permutation(cycle)
    x_train = _render_set(digits.x_train[:, 0].numpy() / 255.0, train_kinds, image_size, glyph_size, rng, contrast)

    test_rng = np.random.default_rng(_TEST_STREAM_SEED)
    test_glyph = np.repeat(np.arange(len(y_test)), num_backgrounds)
    test_kinds = np.tile(np.arange(num_backgrounds), len(y_test))
    test_glyphs = digits.x_test[test_glyph, 0].numpy() / 255.0
    x_test = _render_set(test_glyphs, test_kinds, image_size, glyph_size, test_rng, contrast)

    info = dict(
        source="digits-lt glyphs (sklearn.datasets.load_digits) composited on synthetic backgrounds",
        imbalance_factor=imbalance_factor, n_max=n_max, profile=profile, seed=seed, image_size=image_size,
        glyph_size=glyph_size, contrast=contrast, num_backgrounds=num_backgrounds, min_contexts=min_contexts,
        background_kinds=list(BACKGROUND_KINDS[:num_backgrounds]), contexts=contexts,
        train_backgrounds=train_kinds.tolist(), test_backgrounds=test_kinds.tolist(), test_glyph=test_glyph.tolist(),
    )
    arrays = (x_train, y_train.astype(np.int64), x_test, y_test[test_glyph].astype(np.int64))
    for a in arrays:
        a.setflags(write=False)
    return arrays, info


_MOVED = ("group_accuracy_by_background", "context_table")


def __getattr__(name: str):
    """The analysis helpers moved to :mod:`ltkit.context_analysis` (above the engine); this alias goes next release."""
    if name in _MOVED:
        import warnings

        from . import context_analysis

        warnings.warn(f"ltkit.context_digits.{name} moved to ltkit.context_analysis.{name}.", DeprecationWarning,
                      stacklevel=2)
        return getattr(context_analysis, name)
    raise AttributeError(f"module 'ltkit.context_digits' has no attribute {name!r}")
