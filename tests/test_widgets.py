"""The results explorer, driven from Python: thresholds, seeds, refresh, bad input (no browser)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ltkit import launch, runs, widgets

# digits-lt training sizes, head to tail, and their groups at two pairs of thresholds (by hand)
COUNTS = [140, 103, 76, 56, 42, 31, 23, 17, 12, 9]
GROUPS_100_20 = ["many"] * 2 + ["medium"] * 5 + ["few"] * 3
GROUPS_50_20 = ["many"] * 4 + ["medium"] * 3 + ["few"] * 3
GROUPS_100_40 = ["many"] * 2 + ["medium"] * 3 + ["few"] * 5
TINY = dict(epochs=2, model="mlp", augment="none", progress=False)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """Two methods x two seeds, really trained (2 epochs of an MLP: seconds)."""
    root = tmp_path_factory.mktemp("runs")
    launch.run_grid({"CE": {}, "BS": dict(loss="bs")}, seeds=(0, 1), out_dir=str(root), **TINY)
    return root


@pytest.fixture
def folder(runs_dir, tmp_path) -> Path:
    """A private copy of the runs folder that a test may damage."""
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    return copy


def _explorer(source, **options) -> widgets.Explorer:
    return widgets.Explorer(source, dpi=30, **options)  # small charts: fast tests


def _per_class(root: Path, name: str) -> np.ndarray:
    return np.array(json.loads((root / name / "result.json").read_text())["per_class"])


# --------------------------------------------------------------------------- seeds and thresholds
def test_seeds_are_grouped_by_label_and_all_methods_selected(runs_dir):
    explorer = _explorer(runs_dir)
    assert sorted(explorer.groups) == ["BS", "CE"]
    assert [r.name for r in explorer.groups["CE"]] == ["ce-s0", "ce-s1"]
    assert set(explorer.select.value) == {"BS", "CE"}
    assert dict(explorer.select.options)["CE · 2 seeds"] == "CE"
    assert explorer.message.value == ""  # nothing wrong
    assert widgets.method_label("LDAM-DRW-s12") == "LDAM-DRW" and widgets.method_label("x-s1-y") == "x-s1-y"


def test_default_thresholds_reproduce_the_stored_result(runs_dir):
    """At 100 / 20 the recomputed groups equal what the engine stored."""
    explorer = _explorer(runs_dir)
    assert explorer.class_groups() == GROUPS_100_20
    for name in ("ce-s0", "bs-s1"):
        stored = runs.load_run(runs_dir / name)["result"]
        regrouped = widgets.regroup(stored, 100, 20)
        for key in ("overall", "many", "medium", "few", "worst"):
            assert regrouped[key] == pytest.approx(stored[key])


@pytest.mark.parametrize("many, few, expected", [(50, 20, GROUPS_50_20), (100, 40, GROUPS_100_40)])
def test_sliders_recompute_groups_table_and_chart(runs_dir, many, few, expected):
    explorer = _explorer(runs_dir)
    before_png, before_table = explorer.image.value, explorer.table.value
    explorer.many.value, explorer.few.value = many, few
    assert explorer.class_groups() == expected
    # accuracy by group, by hand: mean of the per-class accuracies of each group, then mean / std over seeds
    groups = np.array(expected)
    summary = explorer.summary()
    for label in ("CE", "BS"):
        seeds = [_per_class(runs_dir, f"{label.lower()}-s{s}") for s in (0, 1)]
        for group in ("many", "medium", "few"):
            values = [acc[groups == group].mean() for acc in seeds]
            mean, std, n = summary[label][group]
            assert (mean, std, n) == (pytest.approx(np.mean(values)), pytest.approx(np.std(values, ddof=1)), 2)
        assert summary[label]["worst"][0] == pytest.approx(np.mean([acc.min() for acc in seeds]))
    sizes = {g: expected.count(g) for g in ("many", "medium", "few")}
    assert f"many n &gt; {many} ({sizes['many']} classes)" in explorer.table.value
    assert explorer.table.value != before_table
    assert explorer.image.value != before_png and explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_sort_orders_the_table(runs_dir):
    explorer = _explorer(runs_dir, sort="overall")
    summary = explorer.summary()

    def table_order():
        return sorted(summary, key=lambda label: explorer.table.value.index(f"<th>{label}</th>"))

    assert table_order() == sorted(summary, key=lambda label: -summary[label]["overall"][0])  # best first
    explorer.sort.value = "name"
    assert table_order() == ["BS", "CE"]


def test_records_from_run_grid_keep_their_labels(runs_dir):
    records = {"plain CE": [runs.load_run(runs_dir / f"ce-s{s}") for s in (0, 1)]}
    widget = widgets.explore(records, dpi=30)
    explorer = widget.explorer
    assert list(explorer.groups) == ["plain CE"] and explorer.select.value == ("plain CE",)
    assert explorer.confusion_run.options == (("ce-s0", "ce-s0"), ("ce-s1", "ce-s1"))
    assert widget.children[-1] is explorer.image and len(explorer.image.value) > 1000


def test_same_label_with_another_config_is_a_separate_method(runs_dir):
    a, b = (runs.load_run(runs_dir / n) for n in ("ce-s0", "ce-s1"))
    b["config"] = {**b["config"], "lr": 0.01}
    explorer = _explorer([a, b])
    assert list(explorer.groups) == ["CE", "CE [2]"]
    assert "differ in lr" in explorer.message.value


# --------------------------------------------------------------------------- runs being written, DDP runs
def test_a_run_still_being_written_shows_its_history_then_refresh_finishes_it(folder):
    result = (folder / "bs-s1" / "result.json").read_text()
    (folder / "bs-s1" / "result.json").unlink()
    history = (folder / "bs-s1" / "history.jsonl").read_text().splitlines()
    (folder / "bs-s1" / "history.jsonl").write_text(history[0] + "\n" + history[1][: len(history[1]) // 2])
    explorer = _explorer(folder)
    assert dict(explorer.select.options)["BS · 1 seed + 1 running (epoch 1/2)"] == "BS"
    assert explorer.summary()["BS"]["overall"][2] == 1  # the finished seed only
    assert [r.name for r in explorer.groups["BS"] if r.history] == ["bs-s0", "bs-s1"]
    (folder / "bs-s1" / "history.jsonl").write_text("\n".join(history) + "\n")  # the run finishes ...
    (folder / "bs-s1" / "result.json").write_text(result)
    explorer.refresh_button.click()  # ... and the learner presses refresh
    assert explorer.summary()["BS"]["overall"][2] == 2
    assert "BS · 2 seeds" in dict(explorer.select.options)


def test_a_method_with_no_finished_run_is_a_note_not_an_error(folder):
    for seed in (0, 1):
        (folder / f"bs-s{seed}" / "result.json").unlink()
    explorer = _explorer(folder)
    assert "<b>BS</b> is still running" in explorer.message.value
    assert list(explorer.summary()) == ["CE"]


def test_runs_of_a_multi_process_job_load_and_say_so(folder):
    """A DDP job writes the same record (rank 0, confusion all-reduced); the list names the process count."""
    for name in ("ce-s0", "ce-s1"):
        for file, key in (("result.json", None), ("config.json", "env")):
            path = folder / name / file
            record = json.loads(path.read_text())
            (record[key] if key else record)["world_size"] = 2
            path.write_text(json.dumps(record))
    explorer = _explorer(folder)
    assert dict(explorer.select.options)["CE · 2 seeds · 2 processes"] == "CE"
    assert explorer.summary()["CE"]["overall"][2] == 2


# --------------------------------------------------------------------------- bad input: messages, not tracebacks
def test_empty_or_missing_folder_is_a_message(tmp_path):
    empty = _explorer(tmp_path)
    assert "no runs under" in empty.message.value and empty.select.options == ()
    missing = _explorer(tmp_path / "nowhere")
    assert "there is no folder" in missing.message.value


@pytest.mark.parametrize("file", ["result.json", "config.json"])
def test_truncated_record_names_the_run_and_the_others_still_load(folder, file):
    path = folder / "ce-s1" / file
    path.write_text(path.read_text()[:40])
    explorer = _explorer(folder)
    assert "<b>ce-s1</b> could not be read" in explorer.message.value and "truncated" in explorer.message.value
    assert [r.name for r in explorer.runs] == ["bs-s0", "bs-s1", "ce-s0"]
    assert explorer.summary()["CE"]["overall"][2] == 1


def test_result_without_per_class_accuracy_is_left_out_with_a_message(runs_dir):
    record = runs.load_run(runs_dir / "ce-s0")
    del record["result"]["per_class"]
    explorer = _explorer([record, runs.load_run(runs_dir / "bs-s0")])
    assert "<b>ce-s0</b> left out" in explorer.message.value and list(explorer.groups) == ["BS"]


def test_runs_of_another_data_set_are_left_out_with_a_message(runs_dir):
    digits = runs.load_run(runs_dir / "ce-s0")
    other = runs.load_run(runs_dir / "bs-s0")
    other["config"] = {**other["config"], "dataset": "cifar10-lt"}
    other["result"] = {**other["result"], "class_counts": [5000 // 2**k for k in range(10)]}
    explorer = _explorer([digits, other])
    assert explorer.select.value == ("CE",)  # the default selection is one data set
    explorer.select.value = ("CE", "BS")
    assert "<b>BS</b> left out: it was trained on cifar10-lt" in explorer.message.value
    assert list(explorer.summary()) == ["CE"]


def test_inconsistent_thresholds_and_an_empty_selection_are_messages(runs_dir):
    explorer = _explorer(runs_dir)
    explorer.many.value, explorer.few.value = 10, 50
    assert "must not exceed the many threshold" in explorer.message.value
    explorer.few.value = 5
    explorer.select.value = ()
    assert "select one or more methods" in explorer.message.value


def test_wrong_argument_types_are_clear_errors(runs_dir):
    with pytest.raises(TypeError, match="runs folder, a run record"):
        widgets.explore(42)
    with pytest.raises(ValueError, match="unknown sort 'speed'; choose one of"):
        widgets.explore(runs_dir, sort="speed")
    with pytest.raises(ValueError, match=r"many=0 must be >= 1 \(thresholds are class sizes"):
        widgets.explore(runs_dir, many=0)


# --------------------------------------------------------------------------- the leaderboard (make demo, notebook 7)
def test_leaderboard_has_every_idea_of_the_kit():
    """Every method module of the engine is on both data sets' line-up; the diffusion fill only where it exists."""
    from ltkit import demo, train

    modules = {train.method_class(o["method"]).__module__ for o in demo.leaderboard_methods("digits-lt", "runs").values()
               if isinstance(o, dict) and "method" in o}
    assert modules == {"ltkit.methods.cmo", "ltkit.methods.cws", "ltkit.methods.feedback"}  # + synlt, a function of the seed
    digits = demo.leaderboard_methods("digits-lt", "r")
    context = demo.leaderboard_methods("context-digits-lt", "r")
    assert set(demo.LOSS_BASELINES) < set(context) and set(digits) - set(context) == {"BS + feedback fill (loss)"}
    syn_lt = digits["Syn-LT"](2)
    assert syn_lt["method"] == "synlt" and syn_lt["method_params"]["g_run"] == str(Path("r") / "ce-s2")
    assert digits["LA (post hoc)"](2) == dict(loss="la-posthoc", weights_from=str(Path("r") / "ce-s2"))
    # the committed fill by name, not by a path into this machine's install: the records travel between laptops
    from ltkit.methods import feedback

    fill = digits["BS + feedback fill (loss)"]["method_params"]["synthetic"]
    assert fill == "committed:digits-lt/loss" and feedback.synthetic_set_path("digits-lt", "loss").is_file()


def test_leaderboard_trains_every_method_and_reports_one_table(tmp_path):
    """Three epochs of the whole line-up on one seed: one record per method, Syn-LT reads the CE run of its seed."""
    from ltkit import demo

    records = demo.train_leaderboard("digits-lt", (0,), runs_dir=tmp_path / "digits-lt", epochs=3, progress=False)
    assert list(records) == list(demo.leaderboard_methods("digits-lt", tmp_path))
    assert records["Syn-LT"][0]["config"]["method_params"]["g_run"] == records["CE"][0]["dir"]
    # Syn-LT trains as CE until its synthesis starts (epoch round(0.8 * 3) = 2): it continued from CE's snapshot
    assert records["Syn-LT"][0]["env"]["continued_from"]["epoch"] == 2
    table = demo.leaderboard_table({"digits-lt": records})
    assert table.index.tolist() == [("digits-lt", label) for label in records]
    assert table.loc[("digits-lt", "BS"), "overall"].startswith(f"{100 * records['BS'][0]['result']['overall']:.1f} ±")
    path = demo.save_leaderboard_figure({"digits-lt": records}, tmp_path / "leaderboard.png")
    assert path.stat().st_size > 10_000


def test_leaderboard_subset_and_unknown_labels(tmp_path):
    from ltkit import demo

    with pytest.raises(ValueError, match=r"not on the context-digits-lt line-up: \['BS \+ feedback fill \(loss\)'\]"):
        demo.train_leaderboard("context-digits-lt", (0,), only=["BS + feedback fill (loss)"], runs_dir=tmp_path)
    records = demo.train_leaderboard("digits-lt", (0,), only=["BS"], runs_dir=tmp_path, epochs=1, progress=False)
    assert list(records) == ["BS"]


# --------------------------------------------------------------------------- method identity, history, pictures
def test_fields_that_vary_with_the_seed_never_split_a_method(runs_dir):
    """Syn-LT's g is the CE run of the same seed: per-seed references, data_seed and names are not the method."""
    a, b = (runs.load_run(runs_dir / n) for n in ("ce-s0", "ce-s1"))
    for record, seed in ((a, 0), (b, 1)):
        record["config"] = {**record["config"], "method_params": {"g_run": f"runs/leaderboard/ce-s{seed}"},
                            "data_seed": seed, "label": "Syn-LT"}
    explorer = _explorer({"Syn-LT": [a, b]})
    assert list(explorer.groups) == ["Syn-LT"] and len(explorer.groups["Syn-LT"]) == 2
    assert explorer.message.value == ""
    b["config"] = {**b["config"], "method_params": {"g_run": "runs/leaderboard/ce-s1", "eta": 0.5}}
    split = _explorer({"Syn-LT": [a, b]})
    assert list(split.groups) == ["Syn-LT", "Syn-LT [2]"] and "differ in method_params" in split.message.value


def test_sparse_evaluation_draws_markers_and_the_training_loss(runs_dir, tmp_path):
    from matplotlib.figure import Figure

    record = runs.load_run(runs_dir / "ce-s0")
    record["history"] = [{"epoch": e, "train_loss": 2.0 / (e + 1), **({"overall": 0.5 + e / 40} if e % 10 == 9 else {})}
                         for e in range(20)]
    run = widgets.Run(record, "CE")
    ax = Figure().subplots()
    widgets.draw_history(ax, {"CE": [run]}, {"CE": "C0"}, "overall")
    (line,) = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert list(line.get_xdata()) == [10, 20]  # the two evaluated epochs, with markers
    twin = [other for other in ax.figure.axes if other is not ax]
    assert twin and len(twin[0].get_lines()[0].get_xdata()) == 20  # the training loss of every epoch
    empty = Figure().subplots()
    widgets.draw_history(empty, {"CE": [widgets.Run({**record, "history": []}, "CE")]}, {"CE": "C0"}, "overall")
    assert "no run has a history yet" in empty.texts[0].get_text()


def test_the_explorer_shows_paired_differences_and_leaves_a_picture(runs_dir):
    widget = widgets.explore(runs_dir, dpi=30, baselines={"BS": "CE"})
    table = widget.explorer.table.value
    assert "Δ overall" in table and "Δ few" in table and "paired difference" in table
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and bundle["image/png"].startswith("iVBOR")


def test_a_background_grid_updates_its_live_view_and_wait_returns_the_foreground_records(tmp_path):
    """The cell returns at once; the view redraws as epochs finish; wait() gives what a foreground grid gives."""
    methods = {"CE": {}, "BS": dict(loss="bs")}
    grid = dict(base="digits-lt", model="mlp", epochs=6, eval_every=2, threads=1, progress=False)
    job = launch.run_grid(methods, (0, 1), out_dir=str(tmp_path / "bg"), workers=2, background=True, interval=0.5,
                          **grid)
    assert not job.done  # returned while training
    view = job.view
    bundle = job._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    records = job.wait(timeout=300)
    assert job.done and view.updates >= 2 and "finished" in view.status.value
    histories = view.histories()
    assert [len(h) for h in histories["CE"]] == [6, 6] and "few" in histories["BS"][0][-1]
    foreground = launch.run_grid(methods, (0, 1), out_dir=str(tmp_path / "fg"), **grid)
    for label in methods:
        for a, b in zip(records[label], foreground[label]):
            assert a["result"]["confusion"] == b["result"]["confusion"]
            assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_a_failing_background_grid_raises_its_error_in_wait(tmp_path):
    job = launch.run_grid({"never on": dict(method="cmo", epochs=2)}, (0,), out_dir=str(tmp_path), background=True,
                          progress=False, model="mlp")
    view = job.view
    with pytest.raises(ValueError, match="would never be on"):
        job.wait(timeout=120)
    assert "<b>failed (ValueError: method &#x27;cmo&#x27; would never be on" in view.status.value  # shown, not raised only


def test_a_method_keeps_its_colour_in_every_figure():
    """The live view (training order) and the explorer (ranked order) colour a label alike."""
    widgets._method_colors([f"seen before {i}" for i in range(30)])  # labels other figures drew first
    live = widgets._method_colors(["CE", "BS", "my idea", "BS + CMO"])
    ranked = widgets._method_colors(["BS + CMO", "my idea", "BS", "CE"])
    assert live == ranked and len(set(live.values())) == 4
    alone = widgets._method_colors(["Syn-LT"])["Syn-LT"]
    assert widgets._method_colors(["CWS", "Syn-LT"])["Syn-LT"] == alone and alone not in live.values()


def test_the_live_view_draws_from_a_thread_without_touching_global_settings(tmp_path):
    import threading

    import matplotlib

    job = launch.run_grid({"CE": {}}, (0,), out_dir=str(tmp_path), base="digits-lt", model="mlp", epochs=2,
                          progress=False)
    view = widgets.LiveView({"CE": [tmp_path / "ce-s0"]})
    before = dict(matplotlib.rcParams)
    seen = []
    original = matplotlib.rcParams.__setitem__

    def spy(key, value):  # any write to the global settings from the drawing thread
        if threading.current_thread() is not threading.main_thread():
            seen.append(key)
        original(key, value)

    matplotlib.rcParams.__class__.__setitem__, restore = spy, matplotlib.rcParams.__class__.__setitem__
    try:
        thread = threading.Thread(target=view.update)
        thread.start()
        thread.join()
    finally:
        matplotlib.rcParams.__class__.__setitem__ = restore
    assert job["CE"] and not seen and dict(matplotlib.rcParams) == before and view.image.value[:4] == b"\x89PNG"


def test_make_demo_trains_both_data_sets_in_one_pool_and_prints_the_table(tmp_path, monkeypatch, capsys):
    """``python -m ltkit demo`` (3 epochs here): every run once, LA (post hoc) from the CE run of its seed, one
    table, one plot; a second call reuses everything and says so."""
    import functools

    from ltkit import demo

    monkeypatch.setattr(demo, "train_leaderboard", functools.partial(demo.train_leaderboard, epochs=3))
    argv = ["--out", str(tmp_path), "--seeds", "0", "1", "--datasets", "digits-lt", "context-digits-lt"]
    demo.main(argv)
    out = capsys.readouterr().out
    for dataset in demo.DATASETS:
        for label in demo.leaderboard_methods(dataset, tmp_path):
            assert (tmp_path / "leaderboard" / dataset / f"{runs.safe_name(label)}-s1" / "result.json").is_file()
    la = json.loads((tmp_path / "leaderboard/context-digits-lt/la-post-hoc-s1/config.json").read_text())["config"]
    assert la["weights_from"] == str(tmp_path / "leaderboard/context-digits-lt/ce-s1")
    assert "context-digits-lt CE" in out and (tmp_path / "leaderboard.png").stat().st_size > 10_000
    demo.main(argv)
    assert "using 20 of 20 runs already finished" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        demo.main(["--workers", "0"])
