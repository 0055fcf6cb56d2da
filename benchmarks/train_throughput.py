"""Training throughput: ltkit's engine against a reference-style (LDAM / CMO) loop.

What is measured
----------------
Images per second of the *training step* (data, forward, backward, SGD step)
on the same model and the same data, side by side in one process:

* model: ResNet-32 with 100 classes (``ltkit.models.ResNet32``);
* data: random CIFAR-shaped ``uint8`` images (seeded) with the CIFAR-100-LT
  IF=100 class sizes (``profiles.preset_counts("cifar100-lt")``, 10,847
  images; ``--subset`` scales every class, at least one image each);
  batch 128, augmentation random crop (padding 4) + horizontal flip.

Two training loops:

1. **ltkit**: ``train.fit("cifar100-lt", data=...)``: the data set lives on the
   device as ``uint8`` and is augmented a batch at a time; on a CPU in fp32 (the
   default) and, where the CPU has native bf16 (AVX512-BF16 / AMX), a second
   time with ``cpu_amp=True`` (bf16 autocast); on a GPU with
   ltkit's defaults (bf16 autocast, channels_last) and ``deterministic=False``
   (cuDNN autotuning, as the reference code does; ``--deterministic`` keeps
   ltkit's default ``True``; ``--compile`` sets ``compile=True``).  Epoch
   times are the ``time_s`` of the run's history rows (the engine reads the
   epoch's loss back from the device, a synchronisation, before it stops its
   clock).
2. **reference**: what the LDAM-DRW / CMO code does: a ``Dataset`` holding the
   images as an HWC ``uint8`` numpy array (like torchvision's ``CIFAR100``)
   returning ``transform(PIL.Image.fromarray(img))`` with torchvision's v1
   transforms (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize),
   a ``DataLoader`` (shuffle, ``--workers`` processes started every epoch,
   pinned memory on a GPU), an fp32 step (SGD momentum 0.9, weight decay 2e-4,
   cross-entropy, ``loss.item()`` every batch for the running average) and
   ``cudnn.benchmark = True``.  The model is built with mean 0 / std 1 so the
   inputs are normalised once, by the transform.

Each loop runs ``--epochs`` epochs; the first is a warm-up and is not counted;
images/s is the median over the others of images / epoch seconds.  The ratio
ltkit / reference is printed at the end.  ``--full-run`` also times a whole
paper-schedule run (200 epochs, all 10,847 images, a 10,000-image test set
evaluated every epoch as the preset does) and says whether it took under 60 s.

Run it
------
    python benchmarks/train_throughput.py                      # CPU: 3 epochs of a 25 % subset
    python benchmarks/train_throughput.py --device cuda        # GPU: all 10,847 images, 5 epochs
    python benchmarks/train_throughput.py --device cuda --full-run            # + one 200-epoch run
    python benchmarks/train_throughput.py --device cuda --full-run --compile  # the same with torch.compile

(from the repository root, with ltkit installed or not).  It prints; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ltkit import data as ltdata  # noqa: E402
from ltkit import models, profiles, runs, train  # noqa: E402

CPU_SUBSET = 0.25  # default --subset on CPU: 2,712 images, about 1.5 minutes in all on 2 idle cores


# --------------------------------------------------------------------------- data
def random_cifar100_lt(fraction: float = 1.0, test_size: int = 100, seed: int = 0) -> ltdata.TensorData:
    """Random uint8 images with the CIFAR-100-LT (IF=100) class sizes, scaled by ``fraction``."""
    counts = [max(1, round(n * fraction)) for n in profiles.preset_counts("cifar100-lt")]
    gen = torch.Generator().manual_seed(seed)
    classes = len(counts)
    y_train = torch.repeat_interleave(torch.arange(classes), torch.tensor(counts))
    y_test = torch.arange(test_size) % classes
    x_train = torch.randint(0, 256, (len(y_train), 3, 32, 32), dtype=torch.uint8, generator=gen)
    x_test = torch.randint(0, 256, (test_size, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return ltdata.TensorData("random-cifar100-lt", x_train, y_train, x_test, y_test,
                             [f"class{k}" for k in range(classes)], info=dict(random=True, fraction=fraction, seed=seed))


class HWCDataset(Dataset):
    """torchvision-CIFAR-style: HWC uint8 numpy images, PIL + v1 transforms per item."""

    def __init__(self, data: ltdata.TensorData, transform: transforms.Compose) -> None:
        self.data = np.ascontiguousarray(data.x_train.permute(0, 2, 3, 1).numpy())  # (N, 32, 32, 3)
        self.targets = data.y_train.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


# --------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(name: str, device: torch.device, epochs: list[tuple[float, int]]) -> dict:
    """Median over the timed epochs (the first, the warm-up, is already dropped)."""
    return dict(method=name, device=str(device), seconds=[s for s, _ in epochs],
                images_per_s=statistics.median(n / s for s, n in epochs),
                epoch_s=statistics.median(s for s, _ in epochs))


def time_ltkit(data: ltdata.TensorData, args: argparse.Namespace, out_dir: str, label: str = "ltkit train.fit",
               **overrides) -> dict:
    record = train.fit("cifar100-lt", data=data, epochs=args.epochs, eval_every=args.epochs,
                       checkpoint_every=args.epochs, progress=False, out_dir=out_dir, name="bench-ltkit",
                       device=args.device, if_exists="overwrite", batch_size=args.batch_size,
                       **ltkit_system(args), **overrides)
    rows = record["history"][1:]
    return summarize(label, torch.device(args.device), [(r["time_s"], r["images"]) for r in rows])


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: what makes bf16 autocast fast on a CPU (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def ltkit_system(args: argparse.Namespace) -> dict:
    """Overrides of the system fields: on a GPU, cuDNN autotuning unless --deterministic."""
    system = dict(compile=True) if args.compile else {}
    return {**system, "deterministic": args.deterministic} if args.device == "cuda" else system


def time_reference(data: ltdata.TensorData, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.use_deterministic_algorithms(False)  # undo what fit() set for itself
    torch.backends.cudnn.benchmark = True  # as in the LDAM / CMO code
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(models.CIFAR_MEAN, models.CIFAR_STD),
    ])
    loader = DataLoader(HWCDataset(data, transform), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = models.ResNet32(data.num_classes, mean=(0, 0, 0), std=(1, 1, 1)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    epochs = [reference_epoch(model, loader, optimizer, device) for _ in range(args.epochs)]
    return summarize("reference-style loop", device, epochs[1:])


def reference_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device) -> tuple[float, int]:
    """One epoch as the reference code runs it; returns (seconds, images)."""
    model.train()
    loss_sum, seen = 0.0, 0
    synchronize(device)
    started = time.perf_counter()
    for x, y in loader:  # the workers start here, every epoch (no persistent_workers)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)  # AverageMeter.update(loss.item(), n)
        seen += len(y)
    synchronize(device)
    return time.perf_counter() - started, seen


def full_run(args: argparse.Namespace, out_dir: str) -> None:
    """One paper-schedule run: 200 epochs, all 10,847 images, the preset's eval / checkpoint cadence."""
    data = random_cifar100_lt(1.0, test_size=10_000)
    started = time.perf_counter()
    record = train.fit("cifar100-lt", data=data, epochs=200, progress=False, out_dir=out_dir,
                       name="bench-ltkit-full", device=args.device, if_exists="overwrite",
                       batch_size=args.batch_size, **ltkit_system(args))
    total = time.perf_counter() - started
    train_s = sum(r["time_s"] for r in record["history"])
    loop_s = record["result"]["wall_time_s"]  # the epoch loop: training + evaluation + checkpoints
    print(f"\nfull run: 200 epochs, {len(data.y_train):,} images, test set {len(data.y_test):,} "
          f"(evaluated every {record['config']['eval_every']} epoch(s))")
    print(f"  training (sum of time_s)         {train_s:8.1f} s")
    print(f"  + evaluation and checkpoints     {loop_s - train_s:8.1f} s")
    print(f"  = 200 epochs (result wall_time)  {loop_s:8.1f} s   under 60 s: {'yes' if loop_s < 60 else 'no'}")
    print(f"  whole fit() call (with set-up)   {total:8.1f} s")


# --------------------------------------------------------------------------- report
def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "cpu"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "cpu")


def print_environment(args: argparse.Namespace, data: ltdata.TensorData) -> None:
    env = runs.environment(args.device)
    name = env["device_name"] if args.device == "cuda" else cpu_name()
    print(f"torch {env['torch']}, torchvision {env['torchvision']}, python {env['python']}")
    print(f"device {args.device}: {name}; torch CPU threads {env['cpu_threads']} "
          f"(os.cpu_count {os.cpu_count()}); DataLoader workers {args.workers}")
    subset = "" if args.subset == 1 else f" (--subset {args.subset:g} of 10,847)"
    print(f"data: {len(data.y_train):,} random training images{subset}, {data.num_classes} classes, "
          f"batch {args.batch_size}; {args.epochs} epochs, the first not counted")
    if args.device == "cuda":
        print(f"ltkit: bf16 autocast, channels_last, deterministic={args.deterministic}, compile={args.compile}; "
              "reference: fp32, cudnn.benchmark")
    else:
        bf16 = "; with native bf16, also cpu_amp=True (bf16 autocast)" if cpu_has_native_bf16() else ""
        print(f"ltkit: fp32 (the CPU default){bf16}, compile={args.compile}; reference: fp32")
    if args.full_run and args.device == "cpu":
        print("--full-run on a CPU: 200 epochs of 10,847 images take hours; it is meant for a GPU")
    print()


def print_table(results: list[dict]) -> None:
    print(f"{'method':<30} {'device':<7} {'images/s':>9} {'epoch s':>8}   timed epochs (s)")
    for r in results:
        seconds = " ".join(f"{s:.2f}" for s in r["seconds"])
        print(f"{r['method']:<30} {r['device']:<7} {r['images_per_s']:9.1f} {r['epoch_s']:8.2f}   {seconds}")
    reference = results[-1]
    for r in results[:-1]:
        print(f"ratio {r['method']} / reference: {r['images_per_s'] / reference['images_per_s']:.2f}×")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per method, the first a warm-up "
                        "(default 3 on cpu, 5 on cuda)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--subset", type=float, default=None,
                        help=f"fraction of the 10,847 images (default {CPU_SUBSET} on cpu, 1.0 on cuda)")
    parser.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (2 cpu, 4 cuda)")
    parser.add_argument("--deterministic", action="store_true", help="cuda: keep ltkit's deterministic=True")
    parser.add_argument("--compile", action="store_true", help="ltkit with compile=True (torch.compile)")
    parser.add_argument("--full-run", action="store_true", help="also time a 200-epoch ltkit run (for a GPU)")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.epochs = args.epochs if args.epochs is not None else (5 if gpu else 3)
    args.subset = args.subset if args.subset is not None else (1.0 if gpu else CPU_SUBSET)
    args.workers = args.workers if args.workers is not None else (4 if gpu else 2)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is a warm-up and is not counted)")
    if not 0 < args.subset <= 1:
        parser.error("--subset must lie in (0, 1]")
    if gpu and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    data = random_cifar100_lt(args.subset)
    print_environment(args, data)
    with tempfile.TemporaryDirectory(prefix="ltkit-bench-") as out_dir:
        results = [time_ltkit(data, args, out_dir)]
        if args.device == "cpu" and cpu_has_native_bf16():  # ltkit's cpu_amp: bf16 autocast on the CPU
            results.append(time_ltkit(data, args, out_dir, "ltkit train.fit, cpu_amp=True", cpu_amp=True))
        results.append(time_reference(data, args))
        print_table(results)
        if args.full_run:
            full_run(args, out_dir)
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
