"""What a Syn-LT synthesis step costs, and what its OT term costs and reaches, side by side with M2m's.

What is measured
----------------
On one class-balanced batch (what M2m / Syn-LT train on after ``start_epoch``):

* **train step**: forward, loss, backward and an SGD step of the network ``f``
  being trained (what the engine does per batch);
* **M2m step**: ``ltkit.methods.synlt.synthesize`` with λ1 = 0: slots, seeds, T = 5
  per-sample normalised gradient steps through ``g`` (CE) and ``f`` (seed-class
  logit), the acceptance test;
* **Syn-LT steps**: the same with the OT term (λ1 = 0.5): per step one batched
  Sinkhorn between the synthetic features of each target class and that class's
  real cloud (≤ 512 images), γ = 0.1, at most 200 iterations, in four versions:

  - ``defaults``: ``SynthesisConfig()`` — each class's cost divided by its mean
    (γ relative), ltkit's batched solver (absorbed scalings), stopped at an L1
    marginal error of ``--ot-tol`` (1e-4), warm-started across the T steps;
  - ``cold starts``: the same without the warm start (``ot_warm=False``);
  - ``raw cost``: ``cost_scale="none"``, γ = 0.1 absolute on raw squared
    feature distances (the reading ltkit used before), same solver;
  - ``before``: the previous implementation, for the record — raw cost, POT's
    ``ot.batch.solve_batch(method="log_sinkhorn")`` (two ``logsumexp`` per
    iteration, stop on POT's row error < 1e-5 checked every 10 iterations).

For every version the script prints the median time per batch and the **OT
term** two ways: *replayed* — the T solves of that version's synthesis step
recorded (features and targets) and re-run alone, forward and backward to the
features (what the term adds: with φ = ``g.features`` the network's forward and
backward are shared with the CE term) — and *excess*, the median difference to
the M2m step over rounds that call both back to back (the whole-step view;
noisy on a busy machine).  Then the ratio of the replayed OT term to M2m's whole
synthesis, and what the Sinkhorn solves reached: iterations per solve, the
largest L1 marginal error of any plan (:func:`ltkit.methods.ot.marginal_error`;
half of it is mass in the wrong place) and how many solves the cap stopped above
the tolerance.  The goal: the OT term under 0.25× M2m's synthesis at a converged
tolerance.

Each configuration is called ``--warmup`` times untimed, then ``--repeats``
rounds of all configurations in turn (``torch.cuda.synchronize`` before every
clock read on a GPU).  A synthesis step *replaces* no training step: per batch
the engine pays train + synthesis, so the slowdown of an epoch with synthesis is
``1 + ratio to train``.

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
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from ot.batch import solve_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from ltkit import data as ltdata  # noqa: E402
from ltkit import models, profiles  # noqa: E402
from ltkit.methods import ot as ltot  # noqa: E402
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


def _pot_solve_batch(c, a, b, gamma, *, max_iter=200, tol=1e-5, init=None, grad="envelope", **_):
    """The previous implementation's solver: POT's batched log-domain Sinkhorn (tol: POT's row-error metric)."""
    result = solve_batch(c, gamma, a, b, max_iter=max_iter, tol=tol, method="log_sinkhorn", grad=grad)
    plan = result.plan
    return ltot.BatchSinkhorn(plan=plan, log_v=torch.zeros_like(b), n_iter=int(result.log["n_iter"]) + 1,
                              marginal_error=ltot.marginal_error(plan.detach(), a.to(plan.dtype), b.to(plan.dtype)))


@contextmanager
def previous_solver():
    """Swap ltkit's batched solver for the previous implementation's (POT's solve_batch) while timing "before"."""
    original = ltot.sinkhorn_batch
    ltot.sinkhorn_batch = _pot_solve_batch
    try:
        yield
    finally:
        ltot.sinkhorn_batch = original


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--setting", default="cifar", choices=["cifar", "digits"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 (cifar), 64 (digits)")
    parser.add_argument("--ot-iters", type=int, default=synlt.SynthesisConfig.ot_iters)
    parser.add_argument("--ot-tol", type=float, default=synlt.SynthesisConfig.ot_tol,
                        help="Sinkhorn stops at this L1 marginal error; 0 runs all --ot-iters iterations")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-before", action="store_true", help="do not time the previous implementation")
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

    solver = dict(ot_iters=args.ot_iters, ot_tol=args.ot_tol)
    configs = {
        "M2m synthesis (lambda1=0)": (synlt.SynthesisConfig(lambda1=0.0), nullcontext),
        "Syn-LT, defaults": (synlt.SynthesisConfig(**solver), nullcontext),
        "Syn-LT, cold starts": (synlt.SynthesisConfig(ot_warm=False, **solver), nullcontext),
        "Syn-LT, raw cost": (synlt.SynthesisConfig(cost_scale="none", **solver), nullcontext),
    }
    if not args.skip_before:
        configs["Syn-LT, before"] = (synlt.SynthesisConfig(cost_scale="none", ot_iters=200, ot_tol=1e-5,
                                                           ot_warm=False), previous_solver)
    results: dict[str, synlt.SynthesisResult] = {}
    recorded: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def run(label: str, record: bool = False) -> None:
        params, context = configs[label]
        original = ltot.grouped_sinkhorn_cost

        def recording(feats, targets, *args, **kwargs):
            recorded.setdefault(label, []).append((feats.detach().clone(), targets.clone()))
            return original(feats, targets, *args, **kwargs)

        if record:
            recorded[label] = []
            ltot.grouped_sinkhorn_cost = recording
        try:
            with context():
                results[label] = synlt.synthesize(x, y, counts, g, generator=torch.Generator().manual_seed(1),
                                                  params=params, f=f, clouds=clouds, autocast=autocast)
        finally:
            ltot.grouped_sinkhorn_cost = original

    def replay(label: str) -> None:
        """The OT term alone: this version's recorded solves, in order, forward and backward to the features."""
        params, context = configs[label]
        warm = ltot.DualCache(*clouds.mass.shape, device=device) if params.ot_warm else None
        with context():
            for feats, targets in recorded[label]:
                z = feats.requires_grad_(True)
                solved = ltot.grouped_sinkhorn_cost(z, targets, clouds.features, clouds.mass, gamma=params.gamma,
                                                    cost=params.cost, max_iter=params.ot_iters, tol=params.ot_tol,
                                                    grad=params.ot_grad, scale=params.cost_scale, warm=warm)
                torch.autograd.grad(solved.weighted_mean(), z)

    def clock(fn) -> float:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - start

    ot_labels = [label for label in configs if configs[label][0].lambda1 > 0]
    for _ in range(args.warmup):
        train_step()
        for label in configs:
            run(label, record=True)
        for label in ot_labels:
            replay(label)
    times: dict[str, list[float]] = {label: [] for label in ["train"] + list(configs)}
    replays: dict[str, list[float]] = {label: [] for label in ot_labels}
    for _ in range(args.repeats):  # rounds: every configuration once, back to back
        times["train"].append(clock(train_step))
        for label in configs:
            times[label].append(clock(lambda: run(label)))
        for label in ot_labels:
            replays[label].append(clock(lambda: replay(label)))

    median = {label: statistics.median(t) for label, t in times.items()}
    m2m_label = "M2m synthesis (lambda1=0)"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.setting}: {name}, batch {batch}, {data.num_classes} classes, device {where}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; median of {args.repeats} rounds")
    print(f"synthesis: T=5, eta=0.1, {len(results[m2m_label].targets)} candidates in the batch; OT gamma=0.1, "
          f"<= {args.ot_iters} Sinkhorn iterations, tol {args.ot_tol:g} (L1 marginal error), "
          f"clouds of <= 512 real images")
    print("OT term: 'replayed' = its T solves re-run alone (fwd+bwd); 'excess' = synthesis minus M2m, same rounds")
    print(f"{'step':<27}{'ms/batch':>9}{'x train':>8}{'replayed':>10}{'excess':>8}{'OT/M2m':>8}"
          f"{'iters/solve':>12}{'max marg.err':>13}{'at cap':>7}")
    print(f"{'train step (fwd+bwd+SGD)':<27}{median['train'] * 1e3:>9.1f}{1.0:>8.2f}")
    print(f"{m2m_label:<27}{median[m2m_label] * 1e3:>9.1f}{median[m2m_label] / median['train']:>8.2f}")
    ratios = {}
    for label in ot_labels:
        excess = statistics.median(s - m for s, m in zip(times[label], times[m2m_label]))
        alone = statistics.median(replays[label])
        ratios[label] = alone / median[m2m_label]
        stats = results[label].ot
        print(f"{label:<27}{median[label] * 1e3:>9.1f}{median[label] / median['train']:>8.2f}{alone * 1e3:>10.1f}"
              f"{excess * 1e3:>8.0f}{ratios[label]:>8.3f}{stats.mean_iterations:>12.1f}{stats.max_error:>13.2e}"
              f"{stats.unconverged:>4}/{stats.solves}")
    print("(times in ms; 'at cap': solves stopped by the iteration cap with the marginal error above the tolerance)")
    defaults = "Syn-LT, defaults"
    line = (f"OT term at the defaults: {ratios[defaults]:.3f}x M2m's synthesis (goal < 0.25) with the largest "
            f"marginal error {results[defaults].ot.max_error:.1e} (tol {args.ot_tol:g})")
    if "Syn-LT, before" in ratios:
        before = results["Syn-LT, before"].ot
        line += (f"; before: {ratios['Syn-LT, before']:.3f}x with {before.max_error:.2g} "
                 f"({before.mean_iterations:.0f} iterations per solve, cap 200)")
    print(line + f". An epoch with Syn-LT synthesis costs {1 + median[defaults] / median['train']:.1f}x an epoch "
                 "without.")


if __name__ == "__main__":
    main()
