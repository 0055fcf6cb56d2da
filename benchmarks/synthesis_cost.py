"""What a Syn-LT synthesis step costs, against one training step of the same model on the same batch.

What is measured
----------------
On one class-balanced batch (what M2m / Syn-LT train on after ``start_epoch``):

* **train step**: forward, loss, backward and an SGD step of the network ``f``
  being trained (what the engine does per batch);
* **M2m step**: ``ltkit.methods.synlt.synthesize`` with λ1 = 0: slots, seeds, T = 5
  per-sample normalised gradient steps through ``g`` (CE) and ``f`` (seed-class
  logit), the acceptance test;
* **Syn-LT step**: the same with the OT term (λ1 = 0.5): per step one batched
  log-domain Sinkhorn (``ot.batch.solve_batch``) between the synthetic features of
  each target class and that class's real cloud (≤ 512 images), γ = 0.1, at most
  200 iterations; ``--ot-tol 0`` forces all 200.

Each is timed ``--repeats`` times after ``--warmup`` untimed calls (median,
``torch.cuda.synchronize`` before every clock read on a GPU) and printed with
its ratio to the training step.  A synthesis step *replaces* no training
step: per batch the engine pays train + synthesis, so the slowdown of an
epoch with synthesis is ``1 + ratio``.

Settings: ``cifar`` (default): ResNet-32, random CIFAR-shaped images with the
CIFAR-10-LT IF=100 class sizes, batch 128 (the LDAM / M2m batch; Syn-LT says 32:
``--batch-size 32``); ``digits``: the small CNN on ``digits-lt``, batch 64.
Weights are random (the cost does not depend on them; acceptance does).

Run it
------
    python benchmarks/synthesis_cost.py                   # CPU, CIFAR-shaped
    python benchmarks/synthesis_cost.py --setting digits  # CPU, digits-lt
    python benchmarks/synthesis_cost.py --device cuda     # GPU (bf16 autocast as in training)
    python benchmarks/synthesis_cost.py --threads 1       # on a shared CPU (avoids thread contention)

(from the repository root, with ltkit installed or not).  It prints; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ltkit import data as ltdata  # noqa: E402
from ltkit import models, profiles  # noqa: E402
from ltkit.methods import synlt  # noqa: E402


def random_cifar10_lt(seed: int = 0) -> ltdata.TensorData:
    counts = profiles.preset_counts("cifar10-lt")
    gen = torch.Generator().manual_seed(seed)
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    x = torch.randint(0, 256, (len(y), 3, 32, 32), dtype=torch.uint8, generator=gen)
    return ltdata.TensorData("random-cifar10-lt", x, y, x[:10], y[:10], [f"class{k}" for k in range(len(counts))])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--setting", default="cifar", choices=["cifar", "digits"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 (cifar), 64 (digits)")
    parser.add_argument("--ot-iters", type=int, default=200)
    parser.add_argument("--ot-tol", type=float, default=synlt.SynthesisConfig.ot_tol,
                        help="Sinkhorn early stop; 0 runs all --ot-iters iterations")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible.")
    device = torch.device(args.device)

    if args.setting == "cifar":
        data, name, batch = random_cifar10_lt(), "resnet32", args.batch_size or 128
        kwargs = dict(in_channels=3, image_size=32)
    else:
        data, name, batch = ltdata.load_digits_lt(), "small-cnn", args.batch_size or 64
        kwargs = dict(in_channels=1, image_size=8)
    torch.manual_seed(0)
    f = models.make_model(name, data.num_classes, **kwargs).to(device)
    g = synlt._freeze(models.make_model(name, data.num_classes, **kwargs).to(device))
    optimizer = torch.optim.SGD(f.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext

    counts = data.class_counts
    weights = 1 / torch.tensor(counts, dtype=torch.float64)[data.y_train]
    idx = torch.multinomial(weights, batch, replacement=True, generator=torch.Generator().manual_seed(0))
    x, y = (data.x_train[idx].float() / 255).to(device), data.y_train[idx].to(device)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    with autocast():
        clouds = synlt.class_clouds(g.features, x_train, y_train, data.num_classes, max_per_class=512,
                                    generator=torch.Generator().manual_seed(0))

    def train_step() -> None:
        f.train()
        with autocast():
            loss = F.cross_entropy(f(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    results = {}

    def synthesis_step(lambda1: float):
        params = synlt.SynthesisConfig(lambda1=lambda1, ot_iters=args.ot_iters, ot_tol=args.ot_tol)

        def step() -> None:
            results[lambda1] = synlt.synthesize(x, y, counts, g, generator=torch.Generator().manual_seed(1),
                                                params=params, f=f, clouds=clouds, autocast=autocast)
        return step

    train_s = timed(train_step, device, args.warmup, args.repeats)
    m2m_s = timed(synthesis_step(0.0), device, args.warmup, args.repeats)
    synlt_s = timed(synthesis_step(0.5), device, args.warmup, args.repeats)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.setting}: {name}, batch {batch}, {data.num_classes} classes, device {where}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"synthesis: T=5, eta=0.1, {len(results[0.5].targets)} candidates in the batch; "
          f"OT gamma=0.1, <= {args.ot_iters} Sinkhorn iterations, tol {args.ot_tol:g}, clouds of <= 512 real images")
    print(f"{'step':<28}{'ms / batch':>12}{'ratio to train':>16}")
    for label, seconds in (("train step (fwd+bwd+SGD)", train_s), ("M2m synthesis (lambda1=0)", m2m_s),
                           ("Syn-LT synthesis (+OT)", synlt_s)):
        print(f"{label:<28}{seconds * 1e3:>12.1f}{seconds / train_s:>16.2f}")
    print(f"the OT term alone: {(synlt_s - m2m_s) * 1e3:.1f} ms per batch "
          f"({(synlt_s - m2m_s) / train_s:.2f} training steps); an epoch with Syn-LT synthesis costs "
          f"{1 + synlt_s / train_s:.1f}x an epoch without.")


if __name__ == "__main__":
    main()
