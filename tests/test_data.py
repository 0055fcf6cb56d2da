"""The data layer: digits-lt, CIFAR-LT from real-format pickles, split files over an image tree."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltkit import data, profiles


# --------------------------------------------------------------------------- digits-lt
def test_digits_lt_profile_and_balanced_test():
    d = data.load_digits_lt()
    assert d.class_counts == profiles.exponential_profile(10, 140, 15)
    assert d.y_test.bincount().tolist() == [30] * 10
    assert d.x_train.dtype == torch.uint8 and d.image_shape == (1, 8, 8)
    assert profiles.group_sizes(d.class_counts) == {"many": 2, "medium": 5, "few": 3}


def test_digits_lt_test_split_is_held_out_and_fixed():
    a, b = data.load_digits_lt(seed=0), data.load_digits_lt(seed=1)
    assert torch.equal(a.x_test, b.x_test)  # the test split does not depend on the subset seed
    assert not torch.equal(a.x_train, b.x_train)  # the long-tailed subset does
    train = {bytes(x.numpy()) for x in a.x_train}
    # no training image appears in the test split (compare pixels; digits has a few exact duplicates)
    from sklearn.datasets import load_digits

    raw = load_digits()
    pixels = np.round(raw.images / 16 * 255).astype(np.uint8)
    dupes = {bytes(p) for p, n in zip(*np.unique(pixels.reshape(len(pixels), -1), axis=0, return_counts=True)) if n > 1}
    leaked = [x for x in a.x_test if bytes(x.numpy()) in train and bytes(x.numpy()) not in dupes]
    assert leaked == []


def test_digits_lt_step_profile_and_bad_factor():
    d = data.load_digits_lt(profile="step", imbalance_factor=10, n_max=100)
    assert d.class_counts == [100] * 5 + [10] * 5
    with pytest.raises(ValueError, match="imbalance_factor=0.9 must be >= 1"):
        data.load_digits_lt(imbalance_factor=0.9)
    with pytest.raises(ValueError, match="class 0 has only .* images but the profile asks for 500"):
        data.load_digits_lt(n_max=500)


# --------------------------------------------------------------------------- CIFAR pickles
def _write_cifar(root: Path, num_classes: int, per_class: int, test_per_class: int = 2) -> None:
    """Write CIFAR's python pickles (the real on-disk format), small."""
    rng = np.random.RandomState(123)
    if num_classes == 10:
        folder, key, meta_name, names_key = root / "cifar-10-batches-py", "labels", "batches.meta", "label_names"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file = "test_batch"
    else:
        folder, key, meta_name, names_key = root / "cifar-100-python", "fine_labels", "meta", "fine_label_names"
        train_files, test_file = ["train"], "test"
    folder.mkdir(parents=True)

    def batch(labels):
        return {"data": rng.randint(0, 256, size=(len(labels), 3072), dtype=np.uint8), key: list(labels)}

    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    for i, chunk in enumerate(np.array_split(labels, len(train_files))):
        with open(folder / train_files[i], "wb") as f:
            pickle.dump(batch(chunk.tolist()), f, protocol=2)
    with open(folder / test_file, "wb") as f:
        pickle.dump(batch(np.repeat(np.arange(num_classes), test_per_class).tolist()), f, protocol=2)
    with open(folder / meta_name, "wb") as f:
        pickle.dump({names_key: [f"class{k}" for k in range(num_classes)]}, f, protocol=2)


def _reference_ldam_subset(targets: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """IMBALANCECIFAR10.gen_imbalanced_data of the LDAM / CMO code, written out."""
    np.random.seed(seed)
    chosen = []
    for the_class, the_img_num in zip(np.unique(targets), counts):
        idx = np.where(targets == the_class)[0]
        np.random.shuffle(idx)
        chosen.append(idx[:the_img_num])
    return np.concatenate(chosen)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_lt_from_real_format_pickles(tmp_path, num_classes):
    per_class = 40
    _write_cifar(tmp_path, num_classes, per_class)
    d = data.load_dataset(f"cifar{num_classes}-lt", root=tmp_path, imbalance_factor=10)
    expected_counts = profiles.exponential_profile(num_classes, per_class, 10)
    assert d.class_counts == expected_counts
    assert d.x_train.shape[1:] == (3, 32, 32) and d.x_train.dtype == torch.uint8
    assert d.y_test.bincount().tolist() == [2] * num_classes
    assert d.classes[:2] == ["class0", "class1"]

    from torchvision.datasets import CIFAR10, CIFAR100

    raw = data._cifar_class(num_classes, check_md5=False)(str(tmp_path), train=True)
    idx = _reference_ldam_subset(np.asarray(raw.targets), expected_counts)
    reference_images = torch.from_numpy(raw.data[idx]).permute(0, 3, 1, 2)
    assert torch.equal(d.x_train, reference_images)  # the same subset as the reference code, pixel for pixel
    assert issubclass(type(raw), CIFAR10 if num_classes == 10 else CIFAR100)


def test_cifar_first_n_rule_is_m2m(tmp_path):
    _write_cifar(tmp_path, 10, 30)
    d = data.load_cifar_lt(tmp_path, num_classes=10, imbalance_factor=5, subset="first")
    raw = data._cifar_class(10, check_md5=False)(str(tmp_path), train=True)
    targets = np.asarray(raw.targets)
    counts = profiles.exponential_profile(10, 30, 5)
    idx = np.concatenate([np.flatnonzero(targets == k)[:n] for k, n in enumerate(counts)])
    assert torch.equal(d.x_train, torch.from_numpy(raw.data[idx]).permute(0, 3, 1, 2))


def test_cifar_missing_folder_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*cifar-100-python.tar.gz"):
        data.load_cifar_lt(tmp_path / "nowhere", num_classes=100)


def test_cifar_incomplete_folder(tmp_path):
    _write_cifar(tmp_path, 10, 5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete or corrupted"):
        data.load_cifar_lt(tmp_path, num_classes=10)


# --------------------------------------------------------------------------- split files
def _write_image_tree(root: Path, counts: list[int], test_per_class: int = 1) -> tuple[Path, Path]:
    lines = {"train": [], "test": []}
    rng = np.random.RandomState(0)
    for split, per_class in (("train", counts), ("test", [test_per_class] * len(counts))):
        for label, n in enumerate(per_class):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rel = f"{split}/n{label:08d}/img_{i}.JPEG"
                Image.fromarray(rng.randint(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / rel, format="JPEG")
                lines[split].append(f"{rel} {label}")
    train_file, test_file = root / "ImageNet_LT_train.txt", root / "ImageNet_LT_test.txt"
    train_file.write_text("\n".join(lines["train"]) + "\n")
    test_file.write_text("\n".join(lines["test"]) + "\n")
    return train_file, test_file


def test_split_file_loader_reads_an_image_tree(tmp_path):
    counts = [6, 3, 1]
    _write_image_tree(tmp_path, counts)
    d = data.load_dataset("imagenet-lt", root=tmp_path, num_classes=3)
    assert d.class_counts == counts and len(d.test) == 3
    image, label = d.train[len(d.train) - 1]
    assert label == 2 and image.size == (10, 12) and image.mode == "RGB"


def test_split_file_bad_line_names_file_and_line(tmp_path):
    train_file, _ = _write_image_tree(tmp_path, [2, 1])
    lines = train_file.read_text().splitlines()
    lines.insert(1, "train/n00000000/img_9.JPEG zero")
    train_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"ImageNet_LT_train.txt, line 2: expected 'relative/path label'"):
        data.load_dataset("imagenet-lt", root=tmp_path, num_classes=2)


def test_split_file_class_without_images(tmp_path):
    _write_image_tree(tmp_path, [2, 1])
    with pytest.raises(ValueError, match="class 2 has no training images"):
        data.load_dataset("imagenet-lt", root=tmp_path, num_classes=3)


def test_split_file_missing_root_says_where_to_get_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="Places-365"):
        data.load_dataset("places-lt", root=tmp_path / "missing")


def test_unknown_dataset_and_missing_root():
    with pytest.raises(ValueError, match="choose one of: digits-lt"):
        data.load_dataset("mnist-lt")
    with pytest.raises(ValueError, match="pass root="):
        data.load_dataset("cifar10-lt")


# =========================================================================== damaged and untrusted files
def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _rewrite_pickle(path: Path, change) -> None:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    change(entry)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def test_cifar_rows_of_the_wrong_length_are_refused(tmp_path):
    _write_cifar(tmp_path, 10, 20)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"

    def double_rows(entry):  # 6144-byte rows: would load as twice the images, misaligned with the labels
        entry["data"] = np.concatenate([entry["data"], entry["data"]], axis=1)

    _rewrite_pickle(batch, double_rows)
    with pytest.raises(data.DataError, match=r"data_batch_2: 'data' is .* shape \(40, 6144\), expected uint8 rows of "
                                             r"3072 bytes.*re-extract") as err:
        data.load_cifar_lt(tmp_path, num_classes=10)
    assert str(batch) in _one_line(err)


def test_cifar_label_count_must_match_image_count(tmp_path):
    _write_cifar(tmp_path, 100, 4)
    _rewrite_pickle(tmp_path / "cifar-100-python" / "test", lambda e: e["fine_labels"].pop())
    with pytest.raises(data.DataError, match=r"cifar-100-python/test: 200 images but 199 labels") as err:
        data.load_cifar_lt(tmp_path, num_classes=100)
    _one_line(err)


@pytest.mark.parametrize("split, bad", [("data_batch_5", 10), ("test_batch", -1)])
def test_cifar_labels_out_of_range_name_file_and_index(tmp_path, split, bad):
    _write_cifar(tmp_path, 10, 20)

    def corrupt(entry):
        entry["labels"][3] = bad

    _rewrite_pickle(tmp_path / "cifar-10-batches-py" / split, corrupt)
    with pytest.raises(data.DataError, match=rf"{split}: label {bad} at index 3 \(1 such labels\) is outside \[0, 10\)") as err:
        data.load_cifar_lt(tmp_path, num_classes=10)
    _one_line(err)


def test_truncated_cifar_pickle_is_named(tmp_path):
    _write_cifar(tmp_path, 10, 20)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    with pytest.raises(data.DataError, match=r"data_batch_4 is truncated or not a CIFAR pickle.*re-extract") as err:
        data.load_cifar_lt(tmp_path, num_classes=10)
    _one_line(err)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_crafted_cifar_pickle_is_refused_without_running_it(tmp_path):
    _write_cifar(tmp_path, 10, 20)
    marker = tmp_path / "payload-ran"
    _rewrite_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1", lambda e: e.update(extra=_Payload(marker)))
    with pytest.raises(data.DataError, match=r"data_batch_1 is truncated or not a CIFAR pickle .*refused global "
                                             r"posix.mkdir") as err:
        data.load_cifar_lt(tmp_path, num_classes=10)
    _one_line(err)
    assert not marker.exists()


def test_verify_checksums_runs_torchvisions_md5_check(tmp_path, monkeypatch):
    import hashlib

    from torchvision.datasets import CIFAR10

    _write_cifar(tmp_path, 10, 20)
    folder = tmp_path / "cifar-10-batches-py"
    with pytest.raises(data.DataError, match=r"data_batch_1 fails torchvision's md5 check \(expected "
                                             r"c99cafc152244af753f735de768cd75f\)") as err:
        data.load_cifar_lt(tmp_path, num_classes=10, imbalance_factor=5, verify_checksums=True)
    _one_line(err)
    data.load_cifar_lt(tmp_path, num_classes=10, imbalance_factor=5)  # off by default: files made by hand load
    md5 = lambda name: hashlib.md5((folder / name).read_bytes()).hexdigest()  # noqa: E731
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(n)] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5(n)] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})
    d = data.load_cifar_lt(tmp_path, num_classes=10, imbalance_factor=5, verify_checksums=True)  # the sums match: it loads
    assert d.info["checksums_verified"] is True
    with open(folder / "test_batch", "r+b") as f:  # one byte changed
        f.seek(-20, 2)
        byte = f.read(1)
        f.seek(-20, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(data.DataError, match="test_batch fails torchvision's md5 check"):
        data.load_cifar_lt(tmp_path, num_classes=10, imbalance_factor=5, verify_checksums=True)


@pytest.mark.parametrize("which, line", [("train", 4), ("test", 2)])
def test_split_file_label_out_of_range_in_train_or_test(tmp_path, which, line):
    train_file, test_file = _write_image_tree(tmp_path, [2, 2, 1])
    path = train_file if which == "train" else test_file
    lines = path.read_text().splitlines()
    lines[line - 1] = lines[line - 1].rsplit(maxsplit=1)[0] + " 3"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(data.DataError, match=rf"{path.name}, line {line}: label 3 is outside \[0, 3\)") as err:
        data.load_dataset("imagenet-lt", root=tmp_path, num_classes=3)
    _one_line(err)


def test_split_file_missing_images_are_listed(tmp_path):
    _write_image_tree(tmp_path, [4, 3, 1])
    for rel in ("train/n00000000/img_1.JPEG", "train/n00000001/img_0.JPEG", "train/n00000001/img_2.JPEG",
                "train/n00000002/img_0.JPEG"):
        (tmp_path / rel).unlink()
    with pytest.raises(data.DataNotFoundError, match=r"4 of 8 images listed in .*ImageNet_LT_train.txt are missing "
                                                     r"under .*\(line 2: train/n00000000/img_1.JPEG, line 5: "
                                                     r"train/n00000001/img_0.JPEG, line 7: train/n00000001/img_2.JPEG, "
                                                     r"\.\.\.\); check root=") as err:
        data.load_dataset("imagenet-lt", root=tmp_path, num_classes=3)
    _one_line(err)
    assert isinstance(err.value, FileNotFoundError)
    assert len(data.load_split_file_lt(tmp_path, tmp_path / "ImageNet_LT_train.txt", tmp_path / "ImageNet_LT_test.txt",
                                       num_classes=3, check_files=False).train) == 8


@pytest.mark.parametrize("content", ["x.jpg 1\nx.jpg -1\n", "x.jpg 1\nx.jpg ²\n", "x.jpg 1\nno-label\n"])
def test_split_file_bad_lines(tmp_path, content):
    path = tmp_path / "split.txt"
    path.write_text(content)
    with pytest.raises(data.DataError, match="split.txt, line 2: expected 'relative/path label'") as err:
        data.read_split_file(path)
    _one_line(err)


def test_split_file_that_is_not_text(tmp_path):
    path = tmp_path / "split.txt"
    path.write_bytes(b"a.jpg 0\n\xff\xfe\x00garbage 1\n")
    with pytest.raises(data.DataError, match="split.txt is not a UTF-8 text file"):
        data.read_split_file(path)


def _damage_jpeg(tmp_path) -> tuple[data.FileData, Path]:
    _write_image_tree(tmp_path, [3, 2, 1])
    broken = tmp_path / "train/n00000001/img_1.JPEG"
    broken.write_bytes(broken.read_bytes()[:200])  # cut: the header parses, the pixels do not
    d = data.load_dataset("imagenet-lt", root=tmp_path, num_classes=3)
    return d, broken


def test_truncated_jpeg_is_named_with_its_split_file_line(tmp_path):
    d, broken = _damage_jpeg(tmp_path)
    with pytest.raises(data.ImageReadError, match=r"img_1.JPEG \(line 5 of .*ImageNet_LT_train.txt\) cannot be read "
                                                  r"as an image \(OSError: (?i:.*truncated.*)\); replace the file") as err:
        d.train[4]
    assert str(broken) in _one_line(err)
    (tmp_path / "train/n00000000/img_0.JPEG").write_bytes(b"not an image at all")
    with pytest.raises(data.ImageReadError, match=r"img_0.JPEG \(line 1 .*UnidentifiedImageError"):
        d.train[0]


def test_truncated_jpeg_in_a_dataloader_worker_is_one_clear_line(tmp_path):
    from torchvision.transforms.functional import pil_to_tensor

    d, broken = _damage_jpeg(tmp_path)
    d.train.transform = pil_to_tensor
    loader = torch.utils.data.DataLoader(d.train, batch_size=2, num_workers=1)
    with pytest.raises(data.ImageReadError) as err:
        list(loader)
    message = _one_line(err)
    assert message.startswith(f"{broken} (line 5 of ") and "cannot be read as an image" in message
    assert message.endswith("(raised in a DataLoader worker).") and "Traceback" not in message


def test_load_dataset_refuses_options_the_loader_does_not_take(tmp_path):
    _write_image_tree(tmp_path, [2, 1])
    with pytest.raises(ValueError, match=r"imagenet-lt takes no imbalance_factor \(the split files fix the training "
                                         r"profile\); valid: check_files, num_classes"):
        data.load_dataset("imagenet-lt", root=tmp_path, imbalance_factor=10)
    with pytest.raises(ValueError, match="cifar10-lt takes no train_file"):
        data.load_dataset("cifar10-lt", root=tmp_path, train_file="x")


def test_class_counts_refuse_labels_out_of_range():
    with pytest.raises(data.DataError, match=r"label 10 \(index 2, 1 such labels\) is outside \[0, 10\)"):
        data.count_labels(torch.tensor([0, 1, 10]), 10)
    with pytest.raises(data.DataError, match=r"label -1 \(index 0"):
        data.count_labels([-1, 0, 1], 2)


# --------------------------------------------------------------------------- image decoders
def test_the_tensor_decoder_reads_what_pil_reads(tmp_path):
    """torchvision.io (or TorchCodec) and PIL give the same RGB pixels up to JPEG rounding; grey becomes RGB."""
    from ltkit.data import ImageListDataset, resolve_decoder

    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(rng.randint(0, 256, (20, 30), dtype=np.uint8)).save(tmp_path / "grey.jpg", quality=95)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    split = tmp_path / "split.txt"
    split.write_text("rgb.jpg 0\ngrey.jpg 1\nbad.jpg 0\n")
    pil = ImageListDataset(tmp_path, split, decoder="pil")
    tensor = ImageListDataset(tmp_path, split, decoder="auto")
    assert tensor.decoder == resolve_decoder("auto") != "pil"
    for i in (0, 1):
        a = torch.from_numpy(np.asarray(pil[i][0])).permute(2, 0, 1).float()
        b = tensor[i][0].float()
        assert b.shape == a.shape == (3, 20, 30) and (a - b).abs().mean() < 2.0
    with pytest.raises(data.ImageReadError, match=r"bad.jpg \(line 3 of .*split.txt\) cannot be read"):
        tensor[2]
