"""The training engine: schedule, augmentation, run records, resume, DDP, bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ltkit import checks, launch, runs, train

QUICK = dict(epochs=4, progress=False)


def _fit(tmp_path, **overrides):
    return train.fit("digits-lt", **{**QUICK, "out_dir": str(tmp_path), **overrides})


def _state(run_dir) -> dict:
    return runs.load_checkpoint(Path(run_dir) / "checkpoint.pt")["model"]


# --------------------------------------------------------------------------- schedule
def test_paper_schedule_matches_the_note():
    """0.1 with 5 warm-up epochs, x0.01 after epoch 160, x0.0001 after 180 (LDAM / CMO code)."""
    config = train.preset("cifar100-lt")
    lrs = [train.learning_rate(config, e) for e in range(200)]
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lrs[5] == lrs[159] == pytest.approx(0.1)
    assert lrs[160] == lrs[179] == pytest.approx(1e-3)
    assert lrs[180] == lrs[199] == pytest.approx(1e-5)


def test_cosine_schedule_ends_near_zero():
    config = train.preset("digits-lt", epochs=30, warmup_epochs=2)
    lrs = [train.learning_rate(config, e) for e in range(30)]
    assert lrs[2] == pytest.approx(config.lr) and lrs[-1] < 0.01 * config.lr
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


# --------------------------------------------------------------------------- augmentation
def test_batched_crop_and_flip_are_real_crops_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = train.augment_batch(x, padding=2, flip=True, generator=torch.Generator().manual_seed(1))
    padded = F.pad(x, (2, 2, 2, 2))
    flipped = 0
    for i in range(len(x)):
        crops = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[i], c) for c in crops)
        mirrored = any(torch.equal(out[i], c.flip(2)) for c in crops)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 15 < flipped < 50  # about half are flipped


# --------------------------------------------------------------------------- a run and its record
def test_run_record_is_complete(tmp_path):
    record = _fit(tmp_path, loss="bs", eval_every=2)
    result, config = record["result"], record["config"]
    assert config["loss"] == "bs" and config["epochs"] == 4
    assert record["env"]["torch"] == torch.__version__ and record["env"]["world_size"] == 1
    assert [row["epoch"] for row in record["history"]] == [0, 1, 2, 3]
    assert "overall" in record["history"][1] and "overall" not in record["history"][0]
    confusion = torch.tensor(result["confusion"])
    assert confusion.sum() == 300  # the full balanced test set
    assert result["overall"] == pytest.approx(confusion.trace().item() / 300)
    assert set(result) >= {"many", "medium", "few", "worst", "per_class", "class_counts", "wall_time_s"}
    assert runs.load_runs(tmp_path)[0]["name"] == "digits-lt-bs-s0"


def test_run_directory_is_never_silently_overwritten(tmp_path):
    _fit(tmp_path, epochs=1)
    with pytest.raises(FileExistsError, match="already exists"):
        _fit(tmp_path, epochs=1)
    again = _fit(tmp_path, epochs=1, if_exists="resume")  # a finished run is reused, not retrained
    assert again["result"]["wall_time_s"] == runs.load_run(again["dir"])["result"]["wall_time_s"]
    with pytest.raises(ValueError, match="differs in \\['lr'\\]"):
        _fit(tmp_path, epochs=1, if_exists="resume", lr=0.01)


def test_a_run_written_before_a_config_field_existed_is_reused(tmp_path):
    """Older records lack newer fields (e.g. cpu_amp): a missing field matches its default, not anything else."""
    record = _fit(tmp_path, epochs=1)
    meta_path = Path(record["dir"]) / "config.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["cpu_amp"]
    meta_path.write_text(json.dumps(meta))
    assert _fit(tmp_path, epochs=1, if_exists="resume")["result"] == record["result"]
    with pytest.raises(ValueError, match="differs in \\['cpu_amp'\\]"):
        _fit(tmp_path, epochs=1, if_exists="resume", cpu_amp=True)


class _LogitsDtype(train.Method):
    name = "test-logits-dtype"
    seen: set = set()

    def loss(self, ctx, batch):
        with ctx.autocast():
            _LogitsDtype.seen.add(ctx.model(batch.x).dtype)


def test_cpu_amp_trains_in_bf16_on_the_cpu(tmp_path):
    train.register_method(_LogitsDtype)
    overall = {}
    for cpu_amp, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        _LogitsDtype.seen = set()
        record = _fit(tmp_path, method="test-logits-dtype", cpu_amp=cpu_amp, name=f"amp-{cpu_amp}")
        assert _LogitsDtype.seen == {dtype}
        overall[cpu_amp] = record["result"]["overall"]
    assert abs(overall[True] - overall[False]) < 0.1  # bf16 learns as well as fp32 (4 epochs)


def test_training_is_deterministic(tmp_path):
    a = _fit(tmp_path, name="a", epochs=2)
    b = _fit(tmp_path, name="b", epochs=2)
    assert a["result"]["confusion"] == b["result"]["confusion"]
    for key, value in _state(a["dir"]).items():
        assert torch.equal(value, _state(b["dir"])[key]), key


def test_weighted_sampler_runs_and_changes_the_result(tmp_path):
    plain = _fit(tmp_path, name="plain", epochs=2)
    balanced = _fit(tmp_path, name="balanced", epochs=2, sampler="class-balanced")
    assert plain["result"]["confusion"] != balanced["result"]["confusion"]


# --------------------------------------------------------------------------- kill and resume
def _cli(tmp_path, *args) -> list[str]:
    return [sys.executable, "-m", "ltkit.train", "--preset", "digits-lt", "--out-dir", str(tmp_path),
            "--progress", "false", "--epochs", "25", *args]


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL a real training process mid-run; --resume ends bit-exactly where an uninterrupted run ends."""
    subprocess.run(_cli(tmp_path, "--name", "whole"), check=True, capture_output=True)
    proc = subprocess.Popen(_cli(tmp_path, "--name", "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = tmp_path / "killed" / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "result.json").exists()
    subprocess.run(_cli(tmp_path, "--name", "killed", "--resume"), check=True, capture_output=True)
    whole, resumed = runs.load_run(tmp_path / "whole"), runs.load_run(tmp_path / "killed")
    assert resumed["result"]["confusion"] == whole["result"]["confusion"]
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]
    for key, value in _state(whole["dir"]).items():
        assert torch.equal(value, _state(resumed["dir"])[key]), key


def test_resume_from_missing_or_corrupt_checkpoint(tmp_path):
    record = _fit(tmp_path, epochs=2)
    run_dir = Path(record["dir"])
    (run_dir / "result.json").unlink()
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        _fit(tmp_path, epochs=2, if_exists="resume")
    (run_dir / "checkpoint.pt").unlink()  # a run that stopped before its first checkpoint: resume starts it afresh
    again = _fit(tmp_path, epochs=2, if_exists="resume")
    assert [row["epoch"] for row in again["history"]] == [0, 1] and again["result"] is not None


# --------------------------------------------------------------------------- DDP
def test_two_process_gloo_ddp_matches_single_process(tmp_path, monkeypatch):
    """launch.run(nproc=2) = torchrun on CPU (gloo) == one process, for a model without batch norm.

    With a global batch split in two, DDP's averaged gradient equals the
    single-process batch gradient; only the summation order differs.
    IF=14 gives 518 training images, an even number, so the shards tile the epoch exactly.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = dict(model="mlp", augment="none", epochs=3, imbalance_factor=14, out_dir=str(tmp_path), progress=False)
    single = launch.run("digits-lt", name="single", **common)
    ddp = launch.run("digits-lt", nproc=2, name="ddp", **common)
    assert ddp["env"]["world_size"] == 2 and ddp["result"]["world_size"] == 2
    assert sum(map(sum, ddp["result"]["confusion"])) == 300  # all-reduced over both test shards
    for a, b in zip(single["history"], ddp["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    for key, value in _state(single["dir"]).items():
        torch.testing.assert_close(_state(ddp["dir"])[key], value, rtol=1e-4, atol=1e-5)
    assert abs(single["result"]["overall"] - ddp["result"]["overall"]) <= 1 / 300


def test_launcher_reports_a_failed_torchrun(tmp_path):
    with pytest.raises(RuntimeError, match="torchrun exited with"):
        launch.run("digits-lt", nproc=2, batch_size=63, epochs=1, out_dir=str(tmp_path), progress=False)


def test_run_grid_workers_give_the_same_records_as_one_process(tmp_path):
    """Two spawned workers train the same runs, bit for bit, as the sequential loop; per-seed overrides work."""
    common = dict(model="mlp", augment="none", epochs=2)
    methods = {"CE": {}, "BS": dict(loss="bs"), "by-seed": lambda seed: dict(lr=0.05 * (seed + 1))}
    one = launch.run_grid(methods, (0, 1), out_dir=str(tmp_path / "one"), progress=False, **common)
    two = launch.run_grid(methods, (0, 1), out_dir=str(tmp_path / "two"), workers=2, progress=False, **common)
    assert list(two) == list(methods) and [r["name"] for r in two["BS"]] == ["bs-s0", "bs-s1"]
    assert [r["config"]["label"] for r in two["BS"]] == ["BS", "BS"]  # the human label, kept for tables
    assert [r["config"]["lr"] for r in two["by-seed"]] == [0.05, 0.1]
    for label in methods:
        for a, b in zip(one[label], two[label]):
            assert a["result"]["per_class"] == b["result"]["per_class"]
            assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    again = launch.run_grid(methods, (0, 1), out_dir=str(tmp_path / "two"), workers=2, progress=False, **common)
    assert again["BS"][1]["result"] == two["BS"][1]["result"]  # finished runs are reused, not retrained


def test_run_grid_after_starts_a_dependent_run_once_its_baseline_has_finished(tmp_path):
    """Syn-LT reads the CE run of its seed: with ``after`` it starts after that run's result exists, in the
    workers as in one process, with the same records."""
    from ltkit.methods import synlt

    common = dict(model="mlp", augment="none", epochs=4)

    def methods(out: Path) -> dict:
        def syn_lt(seed: int) -> dict:
            return dict(method="synlt", method_params={**synlt.QUICK_PARAMS, "g_run": str(out / f"ce-s{seed}")})
        return {"Syn-LT": syn_lt, "CE": {}, "BS": dict(loss="bs")}  # listed first: must still wait for CE

    one = launch.run_grid(methods(tmp_path / "one"), (0, 1), out_dir=str(tmp_path / "one"), after={"Syn-LT": "CE"},
                          progress=False, **common)
    two = launch.run_grid(methods(tmp_path / "two"), (0, 1), out_dir=str(tmp_path / "two"), after={"Syn-LT": "CE"},
                          workers=2, progress=False, **common)
    assert list(two) == ["Syn-LT", "CE", "BS"]
    for seed in (0, 1):
        assert one["Syn-LT"][seed]["result"]["per_class"] == two["Syn-LT"][seed]["result"]["per_class"]
        started = (tmp_path / "two" / f"syn-lt-s{seed}" / "config.json").stat().st_mtime_ns
        assert started >= (tmp_path / "two" / f"ce-s{seed}" / "result.json").stat().st_mtime_ns
    with pytest.raises(ValueError, match="'LA' is not a label of the grid"):
        launch.run_grid({"CE": {}}, (0,), after={"LA": "CE"}, out_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="one level of waiting only"):
        launch.run_grid({"A": {}, "B": {}, "C": {}}, (0,), after={"A": "B", "B": "C"}, out_dir=str(tmp_path),
                        progress=False)


def test_a_post_hoc_run_from_ce_weights_equals_a_trained_one(tmp_path):
    """la-posthoc trains exactly as CE: evaluating CE's final weights (weights_from) gives the record a trained
    la-posthoc run gives, without training; a different recipe or loss is refused before anything is written."""
    common = dict(epochs=4, eval_every=2, seed=3, out_dir=str(tmp_path), progress=False)
    ce = train.fit("digits-lt", loss="ce", name="ce", **common)
    trained = train.fit("digits-lt", loss="la-posthoc", name="la-trained", **common)
    derived = train.fit("digits-lt", loss="la-posthoc", name="la", weights_from=ce["dir"], **common)
    assert derived["result"]["confusion"] == trained["result"]["confusion"] != ce["result"]["confusion"]
    assert derived["result"]["per_class"] == trained["result"]["per_class"]
    assert [r["train_loss"] for r in derived["history"]] == [r["train_loss"] for r in trained["history"]]
    assert derived["history"][-1]["overall"] == trained["result"]["overall"] and "overall" not in derived["history"][1]
    rebuilt = train.load_trained(derived["dir"])
    assert type(rebuilt.loss_fn).__name__ == "PostHocLogitAdjustedLoss"
    for name, tensor in rebuilt.model.state_dict().items():
        assert torch.equal(tensor, train.load_trained(trained["dir"]).model.state_dict()[name])
    bad = [(dict(loss="bs", weights_from=ce["dir"]), "only a post-hoc loss can reuse"),
           (dict(loss="la-posthoc", weights_from=ce["dir"], lr=0.01), r"config differs in \['lr'\]"),
           (dict(loss="la-posthoc", weights_from=str(tmp_path / "nowhere")), "is not a finished run")]
    train.fit("digits-lt", loss="bs", name="bs", **common)
    bad.append((dict(loss="la-posthoc", weights_from=str(tmp_path / "bs")), "its loss 'bs' trains differently"))
    for i, (overrides, message) in enumerate(bad):
        with pytest.raises(checks.InputError, match=message):
            train.fit("digits-lt", **{**common, "name": f"bad{i}", **overrides})
        assert not (tmp_path / f"bad{i}").exists()  # refused before anything is written


_TIMINGS = {"time_s", "data_s", "compute_s", "images_per_s", "peak_memory_mb", "eval_s"}


def _same_training(a: dict, b: dict) -> None:
    """Two records of the same training: history (timings aside), result (wall time aside), final weights."""
    assert [{k: v for k, v in row.items() if k not in _TIMINGS} for row in a["history"]] == \
        [{k: v for k, v in row.items() if k not in _TIMINGS} for row in b["history"]]
    assert {k: v for k, v in a["result"].items() if k != "wall_time_s"} == \
        {k: v for k, v in b["result"].items() if k != "wall_time_s"}
    weights = [runs.load_checkpoint(Path(r["dir"]) / "checkpoint.pt")["model"] for r in (a, b)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_a_continued_run_equals_the_run_trained_from_scratch(tmp_path):
    """CE-DRW and M2m train exactly as CE until the DRW switch / the synthesis start: continuing from CE's
    snapshot there (continue_from) gives the record training from scratch gives, bit for bit, from fewer
    epochs; without the snapshot the run trains from scratch (same record again)."""
    common = dict(epochs=6, eval_every=2, checkpoint_every=1, seed=1, out_dir=str(tmp_path), progress=False)
    ce = train.fit("digits-lt", loss="ce", name="ce", snapshot_epochs=[4], **common)
    assert train.snapshot_path(ce["dir"], 4).is_file()
    m2m = dict(method="m2m", method_params={"start_epoch": 4, "g_run": ce["dir"]})
    for name, overrides in (("drw", dict(loss="ce-drw", loss_params={"drw_epoch": 4})), ("m2m", m2m)):
        scratch = train.fit("digits-lt", name=f"{name}-scratch", **overrides, **common)
        continued = train.fit("digits-lt", name=name, continue_from=ce["dir"], **overrides, **common)
        _same_training(scratch, continued)
        assert continued["env"]["continued_from"] == dict(run=str(Path(ce["dir"]).resolve()), epoch=4)
        assert "continued_from" not in scratch["env"]
    train.snapshot_path(ce["dir"], 4).unlink()
    fallback = train.fit("digits-lt", name="drw-no-snapshot", loss="ce-drw", loss_params={"drw_epoch": 4},
                         continue_from=ce["dir"], **common)
    _same_training(fallback, runs.load_run(tmp_path / "drw-scratch"))
    assert "continued_from" not in fallback["env"]


def test_continuing_a_run_that_trains_differently_is_refused_before_anything_is_written(tmp_path):
    common = dict(epochs=4, eval_every=2, seed=1, out_dir=str(tmp_path), progress=False)
    ce = train.fit("digits-lt", loss="ce", name="ce", snapshot_epochs=[2], **common)
    drw = dict(loss="ce-drw", loss_params={"drw_epoch": 2})
    bad = [(dict(drw, lr=0.01), r"config differs in \['lr'\]"),
           (dict(loss="bs"), "part from the first epoch"),
           (dict(loss="ce", method="cmo"), "part from the first epoch"),  # a method that names no later start
           (dict(loss="ce"), r"part never \(it is the same run"),
           (dict(loss="ce-drw", loss_params={"drw_epoch": 9}), "part never"),
           (dict(loss="la-posthoc", weights_from=ce["dir"]), "continue_from and weights_from are both set")]
    for i, (overrides, message) in enumerate(bad):
        with pytest.raises(checks.InputError, match=message):
            train.fit("digits-lt", **{**common, "name": f"bad{i}", "continue_from": ce["dir"], **overrides})
        assert not (tmp_path / f"bad{i}").exists()
    with pytest.raises(checks.InputError, match="is not a finished run"):
        train.fit("digits-lt", **drw, **common, name="x", continue_from=str(tmp_path / "nowhere"))
    with pytest.raises(checks.InputError, match=r"snapshot_epochs\[0\]=4 must"):
        train.fit("digits-lt", loss="ce", name="y", snapshot_epochs=[4], **common)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_run_failing_in_a_worker_raises_its_own_error(tmp_path):
    methods = {"CE": dict(epochs=1), "never on": dict(method="cmo", epochs=2)}
    with pytest.raises(ValueError, match="would never be on"):
        launch.run_grid(methods, (0,), out_dir=str(tmp_path), workers=2, progress=False)


def test_run_grid_checks_every_config_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown loss 'xent'"):
        launch.run_grid({"CE": {}, "bad": dict(loss="xent")}, (0,), out_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "ce-s0").exists()
    with pytest.raises(ValueError, match="workers=0: must be >= 1"):
        launch.run_grid({"CE": {}}, (0,), workers=0, out_dir=str(tmp_path), progress=False)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: train.preset("cifar1000-lt"), ValueError, "unknown preset 'cifar1000-lt'; choose one of"),
        (lambda: train.preset("digits-lt", loss="xent"), ValueError, "unknown loss 'xent'; choose one of: ce"),
        (lambda: train.preset("digits-lt", epochs="10"), TypeError, "config field 'epochs' expects int, got str"),
        (lambda: train.preset("digits-lt", lr=True), TypeError, "config field 'lr' expects float"),
        (lambda: train.preset("digits-lt", epoch=3), ValueError, r"unknown config field\(s\) \['epoch'\]"),
        (lambda: train.preset("digits-lt", warmup_epochs=-1), ValueError, "warmup_epochs=-1 must be >= 0"),
    ],
)
def test_bad_config_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_class_counts_of_the_wrong_length():
    from ltkit import losses

    with pytest.raises(ValueError, match="class_counts has 3 entries but logits have 10 columns"):
        losses.make_loss("bs", [50, 10, 5])(torch.randn(4, 10), torch.tensor([0, 1, 2, 3]))


def test_cli_prints_a_clear_error_not_a_traceback(tmp_path):
    done = subprocess.run(_cli(tmp_path, "--loss", "xent"), capture_output=True, text=True)
    assert done.returncode == 2
    assert "ltkit.train: error: unknown loss 'xent'" in done.stderr and "Traceback" not in done.stderr


def test_trains_on_split_files_through_dataloader_workers(tmp_path):
    """The large-data path: an image tree + split files, torchvision.transforms.v2, DataLoader."""
    from test_data import _write_image_tree

    root = tmp_path / "ImageNet_LT"
    _write_image_tree(root, [12, 6, 3], test_per_class=2)
    from ltkit.data import load_dataset

    data = load_dataset("imagenet-lt", root=root, num_classes=3)
    record = train.fit("imagenet-lt", data=data, data_root=str(root), model="small-cnn", model_params={"in_channels": 3},
                       image_size=16, batch_size=8, epochs=2, num_workers=0, out_dir=str(tmp_path / "runs"),
                       progress=False)
    assert record["result"]["class_counts"] == [12, 6, 3]
    assert sum(map(sum, record["result"]["confusion"])) == 6
    assert [row["images"] for row in record["history"]] == [21, 21]


def _split_file_run(tmp_path, name: str, **overrides):
    from test_data import _write_image_tree

    from ltkit.data import load_dataset

    root = tmp_path / "ImageNet_LT"
    if not root.exists():
        _write_image_tree(root, [12, 6, 3], test_per_class=2)
    data = load_dataset("imagenet-lt", root=root, num_classes=3)
    return train.fit("imagenet-lt", data=data, data_root=str(root), model="small-cnn",
                     model_params={"in_channels": 3}, image_size=16, batch_size=8,
                     epochs=3, out_dir=str(tmp_path / "runs"), progress=False, name=name, threads=1, **overrides)


def test_split_file_augmentation_is_per_sample_and_the_same_for_any_workers(tmp_path):
    """Each image's random crop / flip is seeded by (seed, epoch, global position): workers change nothing."""
    from test_data import _write_image_tree

    from ltkit.data import load_dataset

    _write_image_tree(tmp_path, [12, 6, 3])
    data = load_dataset("imagenet-lt", root=tmp_path, num_classes=3)
    config = train.preset("imagenet-lt", data_root=str(tmp_path), image_size=16, batch_size=8, num_workers=0)
    data.train.transform = train.file_transforms(config, train=True)
    items = train.SeededItems(data.train)
    a, b = items[123, 0][0], items[123, 0][0]
    assert torch.equal(a, b) and not torch.equal(a, items[124, 0][0])  # same key, same crop; another key, another
    batches = [[(1000 + i, i) for i in range(8)], [(2000 + i, i) for i in range(8, 16)]]
    loaded = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(items, batch_sampler=batches, num_workers=workers)
        loaded[workers] = torch.cat([x for x, _ in loader])
    assert torch.equal(loaded[0], loaded[2])


def test_a_split_file_run_resumed_after_a_crash_is_bit_exact(tmp_path, monkeypatch):
    whole = _split_file_run(tmp_path, "whole", num_workers=2)
    real_epoch = train._train_epoch

    def crash_in_epoch_2(ctx, method, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_epoch(ctx, method, epoch)

    monkeypatch.setattr(train, "_train_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _split_file_run(tmp_path, "crashed", num_workers=2)
    monkeypatch.setattr(train, "_train_epoch", real_epoch)
    resumed = _split_file_run(tmp_path, "crashed", num_workers=1, if_exists="resume")  # other workers: the same draws
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]
    for key, value in _state(whole["dir"]).items():
        assert torch.equal(value, _state(resumed["dir"])[key]), key


def test_a_rehearsal_stops_after_max_steps_and_evaluates_a_fixed_test_subset(tmp_path):
    record = _fit(tmp_path, epochs=30, max_steps=3, max_test_images=25, name="rehearsal")
    (row,) = record["history"]
    assert row["stopped_at_step"] == 3 and record["result"]["stopped_at_step"] == 3
    assert record["result"]["final_epoch"] == 0 and record["result"]["test_images"] == 25
    assert row["images"] == 3 * 64  # three optimiser steps of the preset's batch
    for key in ("data_s", "compute_s", "eval_s", "images_per_s", "peak_memory_mb"):
        assert row[key] >= 0, key
    assert row["data_s"] + row["compute_s"] == pytest.approx(row["time_s"], abs=2e-3)
    env = record["env"]
    assert env["nodes"] == 1 and env["sync_bn"] is False and env["hostnames"]
    again = train.test_positions(train.preset("digits-lt", max_test_images=25), 100)
    assert torch.equal(again, train.test_positions(train.preset("digits-lt", max_test_images=25), 100))


def test_the_inat2018_preset_is_the_imagenet_recipe_on_its_own_split_files():
    inat, imagenet = train.preset("inat2018"), train.preset("imagenet-lt")
    assert inat.dataset == "inat2018" and inat.model == "resnet50" and inat.weight_decay == 1e-4
    assert (inat.epochs, inat.batch_size, inat.milestones) == (imagenet.epochs, imagenet.batch_size, imagenet.milestones)
