"""One result on 1, 2 or 4 processes: every loss and method trains the same weights (gloo on CPU).

Each case trains a small CNN *with batch norm* (synchronised across processes)
with augmentation on, for a few optimiser steps at an epoch where the deferred
re-weighting losses already weigh (``drw_epoch=0``) and the methods are on.
Every random draw is keyed by global position and every loss is reduced over
the global batch, so the runs differ only by the order of float reductions.
One torchrun job per world size trains all cases, to keep the start-up cost low.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ltkit import losses, runs, train
from ltkit.methods import feedback, synlt

STEPS = 4  # optimiser steps per case: enough for the momentum buffers and the BN statistics to matter
# channels_last=False: the CPU kernels of the default channels-last layout round about 10x more per step (relative
# ~1e-5 in one step's gradients against ~1e-6), which would hide a small real difference; the cases named
# "layout-*" run the default layout with a tolerance for that rounding.
COMMON = dict(model="small-cnn", augment="crop", epochs=30, batch_size=64, max_steps=STEPS, max_test_images=64,
              threads=1, checkpoint_every=1000, channels_last=False)
TOLERANCE = dict(rtol=2e-4, atol=2e-5)
LAYOUT_TOLERANCE = dict(rtol=1e-2, atol=2e-4)
DRW = {"ce-drw", "ldam-drw", "focal-drw"}
G_RUN = "<g_run>"  # the synthesis cases' classifier g: a CE run the fixture trains first
SYNTHESIS = ("method-m2m", "method-synlt")


def _loss_cases() -> dict[str, dict]:
    cases = {}
    for name in losses.LOSS_NAMES:
        params = {"drw_epoch": 0} if name in DRW else {}
        cases[f"loss-{name}"] = dict(loss=name, loss_params=params)
    return cases


def _method_cases() -> dict[str, dict]:
    on = dict(off_first=0, off_last=0, prob=1.0)
    fill = str(feedback.synthetic_set_path("digits-lt", "loss"))
    return {
        "method-cmo": dict(loss="bs", method="cmo", method_params=on),
        "method-cutmix": dict(loss="ce", method="cutmix", method_params=on),
        "method-cmo-minor": dict(loss="ce", method="cmo-minor", method_params=on),
        "method-cmo-back": dict(loss="ce", method="cmo-back", method_params=on),
        "method-cws": dict(loss="bs", method="cws", method_params=dict(start_epoch=0)),
        "method-static-split": dict(loss="ce", method="static-split", method_params=dict(start_epoch=0)),
        "method-m2m-resample": dict(loss="ce", method="m2m", method_params=dict(start_epoch=0, synthesis=False)),
        # synthesis on the global batch: the same slots, seeds and starts on every rank, the OT term over all ranks
        "method-m2m": dict(loss="ce", method="m2m", method_params=dict(synlt.QUICK_PARAMS, lambda1=0.0, start_epoch=0,
                                                                       g_run=G_RUN)),
        "method-synlt": dict(loss="ce", method="synlt",
                             method_params=dict(synlt.QUICK_PARAMS, start_epoch=0, g_run=G_RUN)),
        "method-feedback-fill": dict(loss="bs", method="feedback-fill", method_params=dict(synthetic=fill)),
        "sampler-sqrt": dict(loss="ce", sampler="sqrt"),
        "layout-ldam-drw": dict(loss="ldam-drw", loss_params={"drw_epoch": 0}, channels_last=True),
        "layout-cmo": dict(loss="bs", method="cmo", method_params=on, channels_last=True),
    }


CASES = {**_loss_cases(), **_method_cases()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[int, Path]:
    """Every case trained by 1, 2 and 4 gloo processes (one torchrun job each)."""
    root = tmp_path_factory.mktemp("ddp")
    g = train.fit("digits-lt", **{**COMMON, "max_steps": None, "epochs": 10}, name="g", out_dir=str(root),
                  progress=False)
    spec = root / "cases.json"
    spec.write_text(json.dumps([{**COMMON, **case, "name": name} for name, case in CASES.items()]).replace(G_RUN, g["dir"]))
    worker = Path(__file__).with_name("ddp_cases.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = {}
    for world in (1, 2, 4):
        out[world] = root / f"world{world}"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                   str(worker), str(spec), str(out[world])]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_the_same_weights_on_one_two_and_four_processes(trained, name):
    states = {w: runs.load_checkpoint(trained[w] / name / "checkpoint.pt")["model"] for w in trained}
    records = {w: runs.load_run(trained[w] / name) for w in trained}
    assert [records[w]["result"]["world_size"] for w in trained] == [1, 2, 4]
    assert records[2]["env"]["sync_bn"] and records[4]["env"]["sync_bn"] and not records[1]["env"]["sync_bn"]
    assert records[1]["result"]["stopped_at_step"] == STEPS
    for world in (2, 4):
        for key, value in states[1].items():
            other = states[world][key]
            if value.is_floating_point():
                tolerance = LAYOUT_TOLERANCE if name.startswith("layout-") else TOLERANCE
                torch.testing.assert_close(other, value, **tolerance, msg=f"{name}, {key}, world {world}")
            else:
                assert torch.equal(other, value), (name, key, world)
        losses_1 = [row["train_loss"] for row in records[1]["history"]]
        losses_w = [row["train_loss"] for row in records[world]["history"]]
        assert losses_w == pytest.approx(losses_1, rel=1e-4)
        if name in SYNTHESIS:  # the same candidates, accepted alike, whatever the number of processes
            made = {w: runs.read_json(trained[w] / name / "synthesis.json")["history"][0] for w in (1, world)}
            keys = ("slots", "candidates", "accepted", "accepted_per_class")
            assert {k: made[world][k] for k in keys} == {k: made[1][k] for k in keys} and made[1]["accepted"] > 0
