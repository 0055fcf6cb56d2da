"""ltkit.capstone: check_method accepts the notebook's worked example and rejects broken methods with clear
messages; the exported method trains in a worker process exactly as in this one; baselines are reused only
when trained under the same protocol."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from ltkit import capstone, checks, launch, train
from ltkit.checks import param

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "08_your_method.ipynb"
METHOD_MARK = "# ---- your method ----"


def _method_cell() -> str:
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
             if c.cell_type == "code" and c.source.lstrip().startswith(METHOD_MARK)]
    assert len(cells) == 1, f"{NOTEBOOK.name}: expected one cell starting with {METHOD_MARK!r}, found {len(cells)}"
    return cells[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> type:
    """The worked example exactly as the notebook ships it (its method cell, imported as a module)."""
    path = tmp_path_factory.mktemp("example") / "tail_repeat_example.py"
    path.write_text(_method_cell() + "\nprint('a bare expression of the cell')\n")
    module = capstone.load_method_module(path)
    return module.TailRepeat


def _failed(report: capstone.CheckReport, check: str) -> str:
    assert not report.ok, str(report)
    item = report.item(check)
    assert item.ok is False, str(report)
    return item.message


# =========================================================================== the worked example
def test_the_worked_example_passes_every_check(example):
    report = capstone.check_method(example)
    assert report.ok, str(report)
    assert [i.check for i in report.items] == [*capstone.CHECKS, "worker processes"]
    assert all(i.ok for i in report.items), str(report)
    assert report.stats["images_in"] == [64] * 4 and report.stats["images_out"] == [80] * 4
    assert "+16" in report.item("batch()").message
    report.require()  # no error
    assert "✓ random draws" in str(report) and "<table" in report._repr_html_()


def test_the_method_cell_exports_its_definitions_only(example, tmp_path):
    text = capstone.method_definitions(example)
    assert "class TailRepeat(train.Method)" in text and "@train.register_method" in text
    assert "print(" not in text  # bare expressions stay in the notebook
    path = capstone.export_method(example, tmp_path)
    assert path.name == "ltkit_user_tail_repeat.py" and path.read_text().endswith(text)
    assert train.method_class("tail-repeat") is example


# =========================================================================== broken methods
def _subclass(example: type, name: str, **hooks) -> type:
    cls = type(f"Broken_{name.replace('-', '_')}", (example,), {"name": name, **hooks})
    return train.register_method(cls)


def test_a_batch_whose_images_and_labels_differ_in_length_is_rejected(example):
    def batch(self, ctx, batch):  # adds the extra images but forgets their labels
        out = example.batch(self, ctx, batch)
        return dataclasses.replace(out, y=batch.y)

    message = _failed(capstone.check_method(_subclass(example, "broken-size", batch=batch), portable=False), "batch()")
    assert "80 images but 64 labels" in message and "same length" in message


def test_images_outside_zero_one_are_rejected(example):
    def batch(self, ctx, batch):  # normalised images
        out = example.batch(self, ctx, batch)
        return dataclasses.replace(out, x=(out.x - 0.5) / 0.25)

    message = _failed(capstone.check_method(_subclass(example, "broken-range", batch=batch), portable=False),
                      "batch()")
    assert "[0, 1]" in message and "spans [-2" in message


def test_a_draw_from_the_global_torch_generator_is_rejected(example):
    def batch(self, ctx, batch):
        positions = torch.multinomial(self.weights, self.params.extra, replacement=True)  # no generator=
        mine = ctx.local(positions)
        return dataclasses.replace(batch, x=torch.cat([batch.x, ctx.images(positions, None)]),
                                   y=torch.cat([batch.y, ctx.train_y[mine]]), index=None)

    report = capstone.check_method(_subclass(example, "broken-global-torch", batch=batch), portable=False)
    message = _failed(report, "random draws")
    assert "batch() drew from the global random number generator: torch's" in message
    assert "ctx.generator" in message
    assert report.item("batch()").ok is None  # not judged: its draws are not reproducible


def test_a_draw_from_the_global_numpy_generator_in_epoch_start_is_rejected(example):
    def epoch_start(self, ctx, epoch):
        self.coin = np.random.rand() < 0.5

    message = _failed(capstone.check_method(_subclass(example, "broken-global-numpy", epoch_start=epoch_start),
                                            portable=False), "random draws")
    assert "epoch_start() drew" in message and "NumPy's" in message


def test_a_draw_that_changes_between_runs_is_caught_by_comparing_two_runs(example):
    import time

    def batch(self, ctx, batch):  # seeded by the clock: no global generator is touched, yet not reproducible
        g = torch.Generator().manual_seed(time.perf_counter_ns())
        positions = torch.multinomial(self.weights, self.params.extra, replacement=True, generator=g)
        return dataclasses.replace(batch, x=torch.cat([batch.x, ctx.images(positions, None)]),
                                   y=torch.cat([batch.y, ctx.train_y[positions]]), index=None)

    message = _failed(capstone.check_method(_subclass(example, "broken-clock", batch=batch), portable=False),
                      "random draws")
    assert "two runs with the same seed gave different batches" in message and "images" in message


def test_a_non_finite_loss_is_rejected(example):
    def loss(self, ctx, batch):
        logits = ctx.model(batch.x)
        return ctx.loss(ctx.loss_fn, logits, batch.y) / torch.zeros(())

    message = _failed(capstone.check_method(_subclass(example, "broken-loss", loss=loss), portable=False), "loss()")
    assert "inf" in message and "not finite" in message


@pytest.mark.parametrize("case, expected", [
    ("vector", "it must be one number"),
    ("detached", "has no gradient"),
    ("float", "returned float"),
])
def test_a_loss_that_is_not_one_number_with_a_gradient_is_rejected(example, case, expected):
    def loss(self, ctx, batch):
        per_image = torch.nn.functional.cross_entropy(ctx.model(batch.x).float(), batch.y, reduction="none")
        if case == "vector":
            return per_image
        return per_image.mean().detach() if case == "detached" else per_image.mean().item()

    message = _failed(capstone.check_method(_subclass(example, f"broken-loss-{case}", loss=loss), portable=False),
                      "loss()")
    assert expected in message


def test_a_state_that_a_weights_only_checkpoint_refuses_is_rejected(example):
    def state_dict(self):
        return {"weights": np.asarray(self.weights)}  # a NumPy array: not plain data

    message = _failed(capstone.check_method(_subclass(example, "broken-state", state_dict=state_dict),
                                            portable=False), "state_dict()")
    assert "weights_only" in message and "torch.as_tensor" in message


def test_a_state_that_load_state_dict_does_not_restore_is_rejected(example):
    def state_dict(self):
        return {"calls": torch.tensor(getattr(self, "calls", 0))}

    def batch(self, ctx, batch):
        self.calls = getattr(self, "calls", 0) + 1
        return example.batch(self, ctx, batch)

    cls = _subclass(example, "broken-restore", state_dict=state_dict, batch=batch)  # load_state_dict is a no-op
    message = _failed(capstone.check_method(cls, portable=False), "state_dict()")
    assert "after load_state_dict(state), state_dict() differs" in message and "calls" in message


def test_a_method_that_swallows_unknown_parameters_is_rejected(example):
    def __init__(self, **params):
        known = {k: v for k, v in params.items() if k in ("extra", "power")}
        example.__init__(self, **known)

    message = _failed(capstone.check_method(_subclass(example, "broken-kwargs", __init__=__init__),
                                            portable=False), "unknown parameters")
    assert "no_such_parameter=1) was accepted" in message


def test_a_hook_that_raises_is_reported_with_its_line(example):
    def batch(self, ctx, batch):
        return batch.x[10 ** 6]

    report = capstone.check_method(_subclass(example, "broken-raise", batch=batch), portable=False)
    message = _failed(report, "batch()")
    assert message.startswith("batch() raised IndexError") and "line " in message and "batch.x[10 ** 6]" in message
    assert report.item("random draws").ok is None


def test_class_level_mistakes_are_named():
    class NotRegistered(train.Method):
        name = "never-registered"

    assert "@train.register_method" in _failed(capstone.check_method(NotRegistered), "class")
    assert "not a subclass of ltkit.train.Method" in _failed(capstone.check_method(dict), "class")

    @dataclass  # not frozen
    class Loose:
        k: int = param(1, low=0)

    @train.register_method
    class Unfrozen(train.Method):
        name = "broken-unfrozen-params"
        Params = Loose

    assert "frozen dataclass" in _failed(capstone.check_method(Unfrozen), "Params")

    @dataclass(frozen=True)
    class NoDefault:
        k: int = param(low=0)

    @train.register_method
    class Required(train.Method):
        name = "broken-no-default"
        Params = NoDefault

    assert "have no default" in _failed(capstone.check_method(Required), "Params")


def test_require_raises_with_every_failure(example):
    def batch(self, ctx, batch):
        return dataclasses.replace(batch, x=batch.x * 3)

    report = capstone.check_method(_subclass(example, "broken-require", batch=batch), portable=False)
    with pytest.raises(capstone.MethodContractError, match=r"broken-require.*batch\(\): images must stay in \[0, 1\]"):
        report.require()
    with pytest.raises(capstone.MethodContractError):
        capstone.train_method(report.method, seeds=[0], out_dir="unused", epochs=1)


def test_the_kit_methods_pass(tmp_path):
    for name in ("cmo", "cws"):
        report = capstone.check_method(train.method_class(name), portable=False, steps=1)
        assert report.ok, str(report)


# =========================================================================== training
def test_a_worker_process_trains_the_exported_method_like_this_process(example, tmp_path):
    common = dict(seeds=[0], epochs=2, eval_every=1, check=False, progress=False)
    here = capstone.train_method(example, out_dir=tmp_path / "here", workers=1, **common)
    there = capstone.train_method(example, out_dir=tmp_path / "there", workers=2, **common)
    assert list(here) == ["CE", "CE + tail-repeat"]
    module = tmp_path / "there" / "methods" / "ltkit_user_tail_repeat.py"
    assert module.is_file() and not (tmp_path / "here" / "methods").exists()
    for label in here:
        a, b = here[label][0], there[label][0]
        assert a["name"] == b["name"] == ("ce-s0" if label == "CE" else "ce-tail-repeat-s0")
        assert a["result"]["per_class"] == b["result"]["per_class"]
        assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert here["CE + tail-repeat"][0]["history"][0]["images"] > here["CE"][0]["history"][0]["images"]


def test_the_baseline_is_reused_only_under_the_same_protocol(example, tmp_path, capsys):
    board = tmp_path / "leaderboard"
    launch.run_grid({"CE": dict(loss="ce")}, [0], out_dir=str(board), epochs=1, progress=False)
    reused = capstone.train_method(example, seeds=[0], out_dir=tmp_path / "mine", reuse_from=[board], epochs=1,
                                   check=False, progress=False)
    assert Path(reused["CE"][0]["dir"]).parent == board
    assert "1 runs of 'CE' reused from" in capsys.readouterr().out
    again = capstone.train_method(example, seeds=[0], out_dir=tmp_path / "mine2", reuse_from=[board], epochs=1,
                                  lr=0.01, check=False, progress=False)
    assert Path(again["CE"][0]["dir"]).parent == tmp_path / "mine2"  # another lr: trained here
    found, why = capstone.find_runs(board, "CE", dict(loss="ce"), [0], epochs=1, lr=0.01)
    assert found is None and "trained differently (lr)" in why


def test_leaderboard_records_takes_complete_methods_and_says_what_is_missing(tmp_path):
    board = tmp_path / "leaderboard"
    launch.run_grid({"CE": dict(loss="ce"), "BS": dict(loss="bs")}, [0, 1], out_dir=str(board), epochs=1,
                    progress=False)
    (board / "bs-s1" / "result.json").unlink()
    records, notes = capstone.leaderboard_records(board, [0, 1], epochs=1)
    assert list(records) == ["CE"] and len(records["CE"]) == 2
    assert "1 of the kit's 10 methods found" in notes[0] and "BS:" in notes[1] and "unfinished" in notes[1]
    records, notes = capstone.leaderboard_records(board, [0, 1])  # the preset's 100 epochs: nothing matches
    assert records == {} and "trained differently (epochs)" in notes[1] and "python -m ltkit demo" in notes[1]
    records, notes = capstone.leaderboard_records(tmp_path / "nowhere")
    assert records == {} and notes == [f"none of the kit's 10 methods: there is no folder {tmp_path / 'nowhere'}; "
                                       "train them with `python -m ltkit demo --datasets digits-lt` (from the folder "
                                       "holding runs/), or unpack pre-built runs (python -m ltkit unpack-runs)."]


def test_protocol_differences_fill_missing_fields_with_defaults():
    config = train.preset("digits-lt", seed=3)
    stored = {k: v for k, v in config.to_dict().items() if k != "max_steps"}
    assert capstone.protocol_differences(stored, config) == []
    stored["epochs"] = 30
    assert capstone.protocol_differences(stored, config) == ["epochs"]
    assert json.dumps(capstone.PROTOCOL_FIELDS)  # plain names


def test_train_method_refuses_a_mismatched_method_name(example):
    with pytest.raises(checks.InputError, match="overrides name method 'cmo'"):
        capstone.train_method(example, overrides=dict(method="cmo"), seeds=[0], out_dir="unused", check=False)


def test_background_training_returns_a_job_with_the_same_records(example, tmp_path):
    common = dict(seeds=[0], epochs=1, check=False, progress=False)
    job = capstone.train_method(example, out_dir=tmp_path / "bg", background=True, **common)
    assert isinstance(job, launch.GridJob)
    assert set(job.run_dirs) == {"CE", "CE + tail-repeat"}
    records = job.wait(timeout=600)
    assert records["CE + tail-repeat"][0]["dir"] == str(tmp_path / "bg" / "ce-tail-repeat-s0")
    foreground = capstone.train_method(example, out_dir=tmp_path / "bg", **common)  # finished: read back
    assert foreground["CE + tail-repeat"][0]["result"] == records["CE + tail-repeat"][0]["result"]
    assert "image/png" in job._repr_mimebundle_()
