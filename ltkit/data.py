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

Every file is checked when it is loaded, before any training: a damaged,
inconsistent or unreadable file is a one-line :class:`DataError` (a
``ValueError``) or :class:`DataNotFoundError` (a ``FileNotFoundError``) naming
the file (and line or index) and the fix.  An image that cannot be decoded is
found when it is read, inside ``DataLoader`` workers too: :class:`ImageReadError`
names the file and its split-file line.

Untrusted CIFAR files.  CIFAR's "python version" files are pickles, and
unpickling a file with Python's :mod:`pickle` runs whatever functions the file
names: a CIFAR folder from an untrusted source is as dangerous as running its
author's script.  ltkit reads these files with a restricted unpickler that
accepts only what CIFAR files hold (dicts, lists, strings, numbers, numpy
arrays) and refuses anything else with an error naming the file.
``verify_checksums=True`` further compares every file with the md5 sums that
torchvision lists for the official archives (``torchvision.datasets.CIFAR10`` /
``CIFAR100``), so a replaced or damaged file is caught before training.
"""

from __future__ import annotations

import inspect
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import checks, profiles

DIGITS_TEST_PER_CLASS = 30
SHOWN = 3  # how many offending files / lines an error lists


# --------------------------------------------------------------------------- errors
class DataError(checks.InputError):
    """A data file is damaged, inconsistent or of the wrong kind (the message names it and the fix)."""


class DataNotFoundError(checks.LtkitError, FileNotFoundError):
    """A data file or folder is missing (the message says where to get it)."""


class ImageReadError(DataError):
    """An image file cannot be decoded.

    Raised in a ``DataLoader`` worker, torch re-raises it in the main process
    as ``ImageReadError(<"Caught ... Original Traceback ...">)``; the
    constructor keeps only the original one-line message.
    """

    def __init__(self, message: str):
        if message.startswith("Caught ") and "Traceback" in message:
            marker = f"{type(self).__name__}: "
            last = next((ln for ln in reversed(message.splitlines()) if marker in ln), "")
            message = last.split(marker, 1)[1].rstrip(".") + " (raised in a DataLoader worker)." if last else message
        super().__init__(message)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# --------------------------------------------------------------------------- containers
def count_labels(labels: torch.Tensor | Sequence[int], num_classes: int) -> list[int]:
    """Images per class (a label outside ``[0, num_classes)`` or a class with no images is an error)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"label {int(labels[bad[0]])} (index {int(bad[0])}, {bad.size} such labels) is outside "
                        f"[0, {num_classes}): relabel the data or set the number of classes.")
    return profiles.check_counts(np.bincount(labels, minlength=num_classes))


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
        return count_labels(self.y_train, self.num_classes)

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
        raise checks.InputError(f"unknown subset rule {rule!r}; choose 'shuffle' (LDAM/CMO code) or 'first' (M2m code).")
    _check_subset_seed(seed)
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)  # the same stream as np.random.seed(seed) + np.random.shuffle
    chosen = []
    for k, n_k in enumerate(counts):
        idx = np.flatnonzero(labels == k)
        if len(idx) < n_k:
            raise checks.InputError(
                f"class {k} has only {len(idx)} images but the profile asks for {n_k}: lower n_max or the imbalance factor."
            )
        if rule == "shuffle":
            rng.shuffle(idx)
        chosen.append(idx[:n_k])
    return np.concatenate(chosen)


def _check_subset_seed(seed: int) -> int:
    """The seed of a long-tailed subset: NumPy's legacy ``RandomState`` takes ``[0, 2**32)``."""
    return checks.integer("seed", seed, low=0, high=2**32 - 1,
                          hint="the seed that picks the long-tailed subset: the config field data_seed")


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

    _check_subset_seed(seed)
    digits = load_digits()
    images = np.round(digits.images / 16.0 * 255.0).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    smallest = int(np.bincount(labels).min())
    checks.integer("test_per_class", test_per_class, low=1, high=smallest - 1,
                   hint=f"the smallest digit class has {smallest} images, and training needs some of them")
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


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR files hold: plain containers and numpy arrays (nothing that runs code)."""

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        canonical = module.replace("numpy.core", "numpy._core", 1)  # numpy < 2 wrote numpy.core
        if (canonical, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: CIFAR files hold no such object, "
                                         "and loading it could run code")
        if not hasattr(np, "_core"):  # numpy < 2
            canonical = canonical.replace("numpy._core", "numpy.core", 1)
        return super().find_class(canonical, name)


def _cifar_entry(path: Path, fix: str) -> dict:
    """One CIFAR pickle, unpickled safely; a missing, truncated or foreign file names itself and the fix."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path} is missing: the CIFAR folder is incomplete or corrupted; {fix}.") from None
    except Exception as err:  # pickle raises UnpicklingError, EOFError, ValueError, ... for a damaged file
        raise DataError(f"{path} is truncated or not a CIFAR pickle ({type(err).__name__}: {_one_line(err)}); "
                        f"{fix}.") from err
    if not isinstance(entry, dict):
        raise DataError(f"{path} holds a {type(entry).__name__}, not a CIFAR batch (a dict); {fix}.")
    return entry


def _cifar_batch(path: Path, num_classes: int, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` and labels of one batch file, checked: rows of 3072 bytes, one label each, in range."""
    entry = _cifar_entry(path, fix)
    key = "labels" if "labels" in entry else "fine_labels"
    if "data" not in entry or key not in entry:
        raise DataError(f"{path} has no 'data' and '{key}' entries (it has {sorted(map(str, entry))[:6]}): not a "
                        f"CIFAR-{num_classes} batch; {fix}.")
    images, labels = entry["data"], np.asarray(entry[key])
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        shape = getattr(images, "shape", None)
        raise DataError(f"{path}: 'data' is {type(images).__name__} {getattr(images, 'dtype', '')} of shape {shape}, "
                        f"expected uint8 rows of 3072 bytes (3 x 32 x 32 pixels per image); {fix}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {labels.size} labels in '{key}' (one per image); {fix}.")
    if labels.size and labels.dtype.kind not in "iu":
        raise DataError(f"{path}: '{key}' holds {labels.dtype} values, expected integer class indices; {fix}.")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} ({bad.size} such labels) is "
                        f"outside [0, {num_classes}) for CIFAR-{num_classes}: is this the right folder? {fix}.")
    return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_split(folder: Path, files: list, num_classes: int, fix: str) -> tuple[np.ndarray, np.ndarray]:
    batches = [_cifar_batch(folder / name, num_classes, fix) for name, _ in files]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def load_cifar_lt(
    root: str | os.PathLike,
    num_classes: int = 100,
    imbalance_factor: float = 100,
    subset: str = "shuffle",
    seed: int = 0,
    download: bool = False,
    check_md5: bool = False,
    verify_checksums: bool = False,
) -> TensorData:
    """CIFAR-10-LT / CIFAR-100-LT from torchvision's on-disk CIFAR (python pickles).

    Profile: ``n_i = int(n_max (1/IF)^(i/(C-1)))`` with ``n_max`` 5000 / 500;
    subset rule ``"shuffle"`` (LDAM / CMO, seed 0) or ``"first"`` (M2m).
    The test set is the original balanced one.  Every file is unpickled safely
    (see the module docstring) and checked: rows of 3072 bytes, one label per
    image, labels in range.  ``verify_checksums=True`` (``check_md5`` is its
    old name) also runs torchvision's md5 check of every file, which refuses
    files you made yourself (such as the small ones tests write).
    """
    if num_classes not in (10, 100):
        raise checks.InputError(f"num_classes={num_classes!r}: CIFAR comes with 10 or 100 classes.")
    base = _cifar_class(num_classes, check_md5=True)
    root = Path(root)
    folder = root / base.base_folder
    fix = f"re-extract {_CIFAR_URL[num_classes]} into {root}"
    if download and not folder.is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(base.url, str(root), filename=base.filename, md5=base.tgz_md5)
    if not folder.is_dir():
        raise DataNotFoundError(
            f"CIFAR-{num_classes} not found: expected the folder {folder} (with the python pickles). "
            f"Download {_CIFAR_URL[num_classes]} and extract it into {root}, "
            "or pass download=True on a machine with internet access."
        )
    files = [*base.train_list, *base.test_list, [base.meta["filename"], base.meta["md5"]]]
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing:
        raise DataNotFoundError(f"CIFAR-{num_classes} under {folder} is incomplete or corrupted: {', '.join(missing)} "
                                f"missing; {fix}.")
    if verify_checksums or check_md5:
        from torchvision.datasets.utils import check_integrity

        for name, md5 in files:
            if not check_integrity(str(folder / name), md5):
                raise DataError(f"{folder / name} fails torchvision's md5 check (expected {md5}): it is damaged or not "
                                f"the official file; {fix}, or turn verify_checksums off for files you made yourself.")
    x_train, y_train = _cifar_split(folder, base.train_list, num_classes, fix)
    x_test, y_test = _cifar_split(folder, base.test_list, num_classes, fix)
    meta_path = folder / base.meta["filename"]
    names = _cifar_entry(meta_path, fix).get(base.meta["key"])
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{meta_path}: '{base.meta['key']}' should list {num_classes} class names, got "
                        f"{len(names) if isinstance(names, list) else type(names).__name__}; {fix}.")
    n_max = {10: 5000, 100: 500}[num_classes]
    available = count_labels(y_train, num_classes)
    n_max = min(n_max, max(available))  # lets a test use a tiny file in the real format
    counts = profiles.exponential_profile(num_classes, n_max, imbalance_factor)
    idx = lt_subset_indices(y_train, counts, subset, seed)
    return TensorData(
        name=f"cifar{num_classes}-lt",
        x_train=torch.from_numpy(np.ascontiguousarray(x_train[idx])),
        y_train=torch.from_numpy(y_train[idx]),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        classes=[str(n) for n in names],
        info=dict(source=str(folder), imbalance_factor=imbalance_factor, n_max=n_max, subset=subset, seed=seed,
                  checksums_verified=bool(verify_checksums or check_md5)),
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


def _split_lines(path: str | os.PathLike) -> list[tuple[int, str, int]]:
    """``(line number, relative path, label)`` of every non-blank line of a split file."""
    entries = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                parts = line.rsplit(maxsplit=1)
                if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
                    raise DataError(
                        f"{path}, line {lineno}: expected 'relative/path label' with a non-negative integer label, "
                        f"got {line.rstrip()[:80]!r}; fix or delete the line."
                    )
                entries.append((lineno, parts[0], int(parts[1])))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start}): pass the split file "
                        "(lines 'relative/path label').") from None
    if not entries:
        raise DataError(f"{path} holds no 'relative/path label' lines: pass the split file of the data set.")
    return entries


def read_split_file(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Parse ``relative/path label`` lines; blank lines are skipped.

    A line that does not parse raises :class:`DataError` naming the file and line.
    """
    return [(rel, label) for _, rel, label in _split_lines(path)]


def _default_loader(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


#: Image decoders of split-file data sets.  "auto": TorchCodec's decoders when installed (``pip install
#: torchcodec``; the PyTorch project's successor of torchvision.io), else torchvision.io (deprecated since
#: torchvision 0.29, still shipped); both decode straight to a uint8 tensor, 1.5-1.8x faster per core than PIL
#: with the training transform (benchmarks/jpeg_decode.py).  "pil": any format PIL reads.
DECODERS = ("auto", "torchcodec", "torchvision", "pil")


def resolve_decoder(decoder: str) -> str:
    """The decoder ``decoder`` names ("auto": the fastest one installed)."""
    checks.choice("decoder", decoder, DECODERS)
    if decoder != "auto":
        return decoder
    import importlib.util

    return "torchcodec" if importlib.util.find_spec("torchcodec") is not None else "torchvision"


def _decode_tensor(path: Path, decoder: str) -> "torch.Tensor":
    """An RGB ``uint8`` tensor (C, H, W); grey and CMYK JPEGs become RGB."""
    if decoder == "torchcodec":
        from torchcodec.decoders import decode_image as codec_decode

        image = codec_decode(str(path))
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    import warnings

    from torchvision.io import ImageReadMode, decode_image

    with warnings.catch_warnings():  # torchvision.io's decoders are deprecated in favour of TorchCodec's
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(str(path), mode=ImageReadMode.RGB)


class ImageListDataset(Dataset):
    """Images listed in a split file, read from ``root`` on demand.

    An image that cannot be read raises :class:`ImageReadError` naming the
    file and its line (one line, also from a ``DataLoader`` worker).
    """

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike, transform: Callable | None = None,
                 decoder: str = "pil"):
        self.root = Path(root)
        self.decoder = resolve_decoder(decoder)
        self.split_file = Path(split_file)
        lines = _split_lines(split_file)
        self.entries = [(rel, label) for _, rel, label in lines]
        self.line_numbers = [lineno for lineno, _, _ in lines]
        self.targets = [label for _, label in self.entries]
        self.transform = transform
        from PIL import Image

        # every PIL format plugin imported here, in the main process: a DataLoader worker forked while another
        # thread was importing would otherwise import them under a stale import lock (a KeyError, not the error)
        Image.init()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        rel, label = self.entries[i]
        path = self.root / rel
        try:
            image = _default_loader(str(path)) if self.decoder == "pil" else _decode_tensor(path, self.decoder)
        except Exception as err:  # PIL: OSError (truncated), UnidentifiedImageError, ...; torchvision: RuntimeError
            raise ImageReadError(
                f"{path} (line {self.line_numbers[i]} of {self.split_file}) cannot be read as an image "
                f"({type(err).__name__}: {_one_line(err)}); replace the file, or delete its line from the split file."
            ) from err
        return (self.transform(image) if self.transform else image), label

    def check_labels(self, num_classes: int) -> None:
        """Every label in ``[0, num_classes)``, or a :class:`DataError` naming the first bad line."""
        bad = [i for i, y in enumerate(self.targets) if y >= num_classes]
        if bad:
            i = bad[0]
            raise DataError(f"{self.split_file}, line {self.line_numbers[i]}: label {self.targets[i]} is outside "
                            f"[0, {num_classes}) ({len(bad)} such lines); fix the split file or num_classes.")

    def check_files(self) -> None:
        """Every listed image exists, or a :class:`DataNotFoundError` listing the first few that do not."""
        missing = [i for i, (rel, _) in enumerate(self.entries) if not os.path.isfile(self.root / rel)]
        if missing:
            shown = ", ".join(f"line {self.line_numbers[i]}: {self.entries[i][0]}" for i in missing[:SHOWN])
            raise DataNotFoundError(
                f"{len(missing)} of {len(self)} images listed in {self.split_file} are missing under {self.root} "
                f"({shown}{', ...' if len(missing) > SHOWN else ''}); check root= (the folder the listed paths are "
                "relative to) and that the images are all there."
            )


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
        return count_labels(self.train.targets, self.num_classes)

    @property
    def classes(self) -> list[str]:
        return [str(k) for k in range(self.num_classes)]


def load_split_file_lt(
    root: str | os.PathLike,
    train_file: str | os.PathLike,
    test_file: str | os.PathLike,
    num_classes: int | None = None,
    name: str = "split-file-lt",
    check_files: bool = True,
) -> FileData:
    """A long-tailed data set from an image root and two split files.

    ``num_classes`` defaults to ``1 + max label``.  Checked before training:
    every line parses, every label (train and test) is in range, every class
    has a training image and (``check_files``, one ``stat`` per image) every
    listed image exists.  Images that exist but cannot be decoded are found
    when they are read (:class:`ImageReadError`).
    """
    root = Path(root)
    if not root.is_dir():
        where = SPLIT_FILE_HELP.get(name, "the images and their split files")
        raise DataNotFoundError(f"image root {root} does not exist. Get {where}, and pass root=<the folder the paths "
                                "are relative to>.")
    for split in (train_file, test_file):
        if not Path(split).is_file():
            raise DataNotFoundError(f"split file {split} does not exist. Get {SPLIT_FILE_HELP.get(name, 'it')}.")
    train, test = ImageListDataset(root, train_file), ImageListDataset(root, test_file)
    if num_classes is None:
        num_classes = 1 + max(train.targets + test.targets)
    checks.integer("num_classes", num_classes, low=1)
    for split in (train, test):
        split.check_labels(num_classes)
    counts = np.bincount(train.targets, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise DataError(
            f"{train_file}: class {int(empty[0])} has no training images (empty classes: {empty.tolist()[:10]}); "
            "check the split file and num_classes."
        )
    if check_files:
        for split in (train, test):
            split.check_files()
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
        raise checks.InputError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}.")
    if root is None:
        raise checks.InputError(f"{name} is read from disk: pass root=<data folder> (the config field data_root, "
                                f"--data-root; bundled, no root needed: {', '.join(BUNDLED)}).")
    cifar = name in ("cifar10-lt", "cifar100-lt")
    loader, fixed = (load_cifar_lt, {"root", "num_classes"}) if cifar else (load_split_file_lt, {"root", "name"})
    valid = sorted(set(inspect.signature(loader).parameters) - fixed)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        why = "" if cifar else " (the split files fix the training profile)"
        raise checks.InputError(f"{name} takes no {', '.join(unknown)}{why}; valid: {', '.join(valid)}.")
    if cifar:
        return load_cifar_lt(root, num_classes=10 if name == "cifar10-lt" else 100, **kwargs)
    train_name, test_name, num_classes = SPLIT_FILES[name]
    train_file = kwargs.pop("train_file", Path(root) / train_name)
    test_file = kwargs.pop("test_file", Path(root) / test_name)
    return load_split_file_lt(root, train_file, test_file, num_classes=kwargs.pop("num_classes", num_classes), name=name, **kwargs)
