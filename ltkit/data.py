"""Long-tailed data sets: the bundled ``digits-lt`` and the real loaders.

Two kinds of data set, one per scale:

* :class:`TensorData` holds *all* images as one ``uint8`` tensor
  ``(N, C, H, W)`` plus labels.  Small data sets (``digits-lt``, CIFAR-LT)
  are loaded this way so that the training engine can keep them on the
  device and augment whole batches at once.
* :class:`FileData` wraps two :class:`ImageListDataset` objects that read
  images from disk through split files (``relative/path label`` per line), the
  format of ImageNet-LT, Places-LT and iNaturalist 2018 (Liu et al., CVPR 2019,
  "OLTR"; Kang et al., ICLR 2020).  Large data sets are read this way, through
  ``DataLoader`` workers.

The long-tailed *training* subset is chosen with :mod:`ltkit.profiles`; test
sets stay balanced.  Two subset rules exist in the literature (a choice, a
parameter): ``"shuffle"`` keeps, per class, the first ``n_i`` images after a
seeded shuffle (``np.random.seed(seed)``, classes in label order: the LDAM / CMO
code), ``"first"`` keeps the first ``n_i`` images of each class in file order
(the M2m code).

``digits-lt`` (the default whenever no other data is given) is built from
scikit-learn's bundled 8x8 handwritten digits (1,797 images, nothing is
downloaded): a balanced test split of 30 images per class (fixed, seed 0) and a
long-tailed training subset of the rest with the exponential profile
``n_max = 140, IF = 15`` (140, 103, 76, 56, 42, 31, 23, 17, 12, 9: 2 many,
5 medium, 3 few classes at the default thresholds 100 / 20).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import profiles

DIGITS_TEST_PER_CLASS = 30


# --------------------------------------------------------------------------- containers
def class_counts(labels: torch.Tensor | Sequence[int], num_classes: int) -> list[int]:
    """Images per class (a class with no images is an error)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return profiles.check_counts(counts[:num_classes])


@dataclass
class TensorData:
    """A whole data set in memory: ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def class_counts(self) -> list[int]:
        return class_counts(self.y_train, self.num_classes)

    def __repr__(self) -> str:
        return (
            f"TensorData({self.name!r}: {len(self.y_train)} train / {len(self.y_test)} test images of shape "
            f"{self.image_shape}, {self.num_classes} classes, IF {profiles.imbalance_factor(self.class_counts):g})"
        )


def lt_subset_indices(labels: np.ndarray, counts: Sequence[int], rule: str = "shuffle", seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subset: ``counts[k]`` images of class ``k``.

    ``rule="shuffle"`` reproduces the LDAM / CMO code exactly (per class, in
    label order, ``np.random.shuffle`` of the class's indices after
    ``np.random.seed(seed)``, keep the first ``n_k``); ``rule="first"`` keeps
    the first ``n_k`` in file order (M2m).
    """
    if rule not in ("shuffle", "first"):
        raise ValueError(f"unknown subset rule {rule!r}; choose 'shuffle' (LDAM/CMO code) or 'first' (M2m code).")
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)  # the same stream as np.random.seed(seed) + np.random.shuffle
    chosen = []
    for k, n_k in enumerate(counts):
        idx = np.flatnonzero(labels == k)
        if len(idx) < n_k:
            raise ValueError(
                f"class {k} has only {len(idx)} images but the profile asks for {n_k}: lower n_max or the imbalance factor."
            )
        if rule == "shuffle":
            rng.shuffle(idx)
        chosen.append(idx[:n_k])
    return np.concatenate(chosen)


# --------------------------------------------------------------------------- digits-lt
def load_digits_lt(
    imbalance_factor: float = 15,
    n_max: int = 140,
    profile: str = "exponential",
    seed: int = 0,
    test_per_class: int = DIGITS_TEST_PER_CLASS,
) -> TensorData:
    """The bundled default data set, built from ``sklearn.datasets.load_digits``.

    The test split (``test_per_class`` images of every class) is fixed by
    seed 0; the long-tailed training subset of the remaining images follows
    ``profile`` (``exponential`` or ``step``) and ``seed``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images / 16.0 * 255.0).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    split_rng = np.random.RandomState(0)
    test_idx = np.concatenate([split_rng.permutation(np.flatnonzero(labels == k))[:test_per_class] for k in range(10)])
    pool = np.setdiff1d(np.arange(len(labels)), test_idx)
    counts = profiles.make_profile(profile, 10, n_max, imbalance_factor)
    train_idx = pool[lt_subset_indices(labels[pool], counts, "shuffle", seed)]
    return TensorData(
        name="digits-lt",
        x_train=torch.from_numpy(images[train_idx]),
        y_train=torch.from_numpy(labels[train_idx]),
        x_test=torch.from_numpy(images[test_idx]),
        y_test=torch.from_numpy(labels[test_idx]),
        classes=[str(k) for k in range(10)],
        info=dict(source="sklearn.datasets.load_digits", profile=profile, n_max=n_max,
                  imbalance_factor=imbalance_factor, seed=seed, test_per_class=test_per_class),
    )


# --------------------------------------------------------------------------- CIFAR-LT
_CIFAR_URL = {10: "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              100: "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}


def _cifar_class(num_classes: int, check_md5: bool):
    """torchvision's CIFAR class; without ``check_md5`` only the files' presence is checked."""
    from torchvision.datasets import CIFAR10, CIFAR100

    base = {10: CIFAR10, 100: CIFAR100}[num_classes]
    if check_md5:
        return base

    class PresenceChecked(base):  # check_integrity(path, md5=None) only tests that the file exists
        train_list = [[name, None] for name, _ in base.train_list]
        test_list = [[name, None] for name, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    return PresenceChecked


def load_cifar_lt(
    root: str | os.PathLike,
    num_classes: int = 100,
    imbalance_factor: float = 100,
    subset: str = "shuffle",
    seed: int = 0,
    download: bool = False,
    check_md5: bool = False,
) -> TensorData:
    """CIFAR-10-LT / CIFAR-100-LT from torchvision's on-disk CIFAR (python pickles).

    Profile: ``n_i = int(n_max (1/IF)^(i/(C-1)))`` with ``n_max`` 5000 / 500;
    subset rule ``"shuffle"`` (LDAM / CMO, seed 0) or ``"first"`` (M2m).
    The test set is the original balanced one.  ``check_md5=False`` (default)
    only checks that the files exist, which is faster and lets tests write
    small files in the real format.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes={num_classes!r}: CIFAR comes with 10 or 100 classes.")
    cls = _cifar_class(num_classes, check_md5)
    folder = Path(root) / cls.base_folder
    if not download and not folder.is_dir():
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found: expected the folder {folder} (with the python pickles). "
            f"Download {_CIFAR_URL[num_classes]} and extract it into {Path(root)}, "
            "or pass download=True on a machine with internet access."
        )
    try:
        train, test = cls(str(root), train=True, download=download), cls(str(root), train=False, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"CIFAR-{num_classes} under {folder} is incomplete or corrupted ({err}). "
            f"Re-extract {_CIFAR_URL[num_classes]} into {Path(root)}."
        ) from err
    n_max = {10: 5000, 100: 500}[num_classes]
    available = class_counts(train.targets, num_classes)
    n_max = min(n_max, max(available))  # lets a test use a tiny file in the real format
    counts = profiles.exponential_profile(num_classes, n_max, imbalance_factor)
    idx = lt_subset_indices(np.asarray(train.targets), counts, subset, seed)
    to_tensor = lambda images: torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
    return TensorData(
        name=f"cifar{num_classes}-lt",
        x_train=to_tensor(train.data[idx]),
        y_train=torch.as_tensor(np.asarray(train.targets)[idx], dtype=torch.int64),
        x_test=to_tensor(test.data),
        y_test=torch.as_tensor(test.targets, dtype=torch.int64),
        classes=list(train.classes),
        info=dict(source=str(folder), imbalance_factor=imbalance_factor, n_max=n_max, subset=subset, seed=seed),
    )


# --------------------------------------------------------------------------- split files
SPLIT_FILE_HELP = {
    "imagenet-lt": "ImageNet-LT: the ILSVRC-2012 images (image-net.org) and the split files ImageNet_LT_train.txt / "
                   "ImageNet_LT_test.txt of the OLTR project (github.com/zhmiao/OpenLongTailRecognition-OLTR)",
    "places-lt": "Places-LT: the Places-365 images (places2.csail.mit.edu) and Places_LT_train.txt / Places_LT_test.txt "
                 "of the OLTR project",
    "inat2018": "iNaturalist 2018: the images (github.com/visipedia/inat_comp) and iNaturalist18_train.txt / "
                "iNaturalist18_val.txt (the same 'path label' format, from the Decoupling project, "
                "github.com/facebookresearch/classifier-balancing)",
}


def read_split_file(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Parse ``relative/path label`` lines; blank lines are skipped.

    A line that does not parse raises ``ValueError`` naming the file and line.
    """
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
                raise ValueError(
                    f"{path}, line {lineno}: expected 'relative/path label' with a non-negative integer label, "
                    f"got {line.rstrip()!r}."
                )
            entries.append((parts[0], int(parts[1])))
    if not entries:
        raise ValueError(f"{path} holds no 'relative/path label' lines.")
    return entries


def _default_loader(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


class ImageListDataset(Dataset):
    """Images listed in a split file, read from ``root`` on demand."""

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike, transform: Callable | None = None):
        self.root = Path(root)
        self.split_file = Path(split_file)
        self.entries = read_split_file(split_file)
        self.targets = [label for _, label in self.entries]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        rel, label = self.entries[i]
        path = self.root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} (listed in {self.split_file}) does not exist: check the data root.")
        image = _default_loader(str(path))
        return (self.transform(image) if self.transform else image), label


@dataclass
class FileData:
    """A data set read from disk through split files (ImageNet-LT style)."""

    name: str
    train: ImageListDataset
    test: ImageListDataset
    num_classes: int
    info: dict = field(default_factory=dict)

    @property
    def class_counts(self) -> list[int]:
        return class_counts(self.train.targets, self.num_classes)

    @property
    def classes(self) -> list[str]:
        return [str(k) for k in range(self.num_classes)]


def load_split_file_lt(
    root: str | os.PathLike,
    train_file: str | os.PathLike,
    test_file: str | os.PathLike,
    num_classes: int | None = None,
    name: str = "split-file-lt",
) -> FileData:
    """A long-tailed data set from an image root and two split files.

    ``num_classes`` defaults to ``1 + max label``; every class must have at
    least one training image.
    """
    root = Path(root)
    if not root.is_dir():
        where = SPLIT_FILE_HELP.get(name, "the images and their split files")
        raise FileNotFoundError(f"image root {root} does not exist. Get {where}, and pass root=<the folder the paths are relative to>.")
    for split in (train_file, test_file):
        if not Path(split).is_file():
            raise FileNotFoundError(f"split file {split} does not exist. Get {SPLIT_FILE_HELP.get(name, 'it')}.")
    train, test = ImageListDataset(root, train_file), ImageListDataset(root, test_file)
    num_classes = num_classes or 1 + max(train.targets + test.targets)
    counts = np.bincount(train.targets, minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"{train_file} has labels up to {len(counts) - 1} but num_classes={num_classes}.")
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"{train_file}: class {int(empty[0])} has no training images (empty classes: {empty.tolist()[:10]}); "
            "check the split file and num_classes."
        )
    return FileData(name, train, test, num_classes, info=dict(root=str(root), train_file=str(train_file), test_file=str(test_file)))


SPLIT_FILES = {
    "imagenet-lt": ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt", 1000),
    "places-lt": ("Places_LT_train.txt", "Places_LT_test.txt", 365),
    "inat2018": ("iNaturalist18_train.txt", "iNaturalist18_val.txt", 8142),
}

# Bundled data sets (built from packaged data, nothing downloaded): name -> "module:function".
BUNDLED = {
    "digits-lt": "ltkit.data:load_digits_lt",
    "context-digits-lt": "ltkit.context_digits:load_context_digits_lt",
}
DATASETS = (*BUNDLED, "cifar10-lt", "cifar100-lt", *SPLIT_FILES)


def load_bundled(name: str, **kwargs) -> TensorData:
    """A bundled data set by name; keyword arguments go to its loader."""
    import importlib

    module, function = BUNDLED[name].split(":")
    return getattr(importlib.import_module(module), function)(**kwargs)


def load_dataset(name: str = "digits-lt", root: str | os.PathLike | None = None, **kwargs) -> TensorData | FileData:
    """Load a data set by name; ``digits-lt`` needs no ``root``.

    For the split-file data sets, ``root`` holds the images and the two split
    files (or pass ``train_file`` / ``test_file``).
    """
    if name in BUNDLED:
        return load_bundled(name, **kwargs)
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}.")
    if root is None:
        raise ValueError(f"{name} is read from disk: pass root=<data folder> (bundled, no root needed: {', '.join(BUNDLED)}).")
    if name in ("cifar10-lt", "cifar100-lt"):
        return load_cifar_lt(root, num_classes=10 if name == "cifar10-lt" else 100, **kwargs)
    train_name, test_name, num_classes = SPLIT_FILES[name]
    train_file = kwargs.pop("train_file", Path(root) / train_name)
    test_file = kwargs.pop("test_file", Path(root) / test_name)
    return load_split_file_lt(root, train_file, test_file, num_classes=kwargs.pop("num_classes", num_classes), name=name, **kwargs)
