"""Run records: safe names, exclusive claims, overwrite of runs only, safe loading, consistent history."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ltkit import checks, runs

REPO = Path(__file__).resolve().parents[1]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def fake_run(run_dir: Path, *, checkpoint: bool = True, result: bool = True, epochs: int = 3,
             config: dict | None = None) -> Path:
    """A run record as the engine writes it (config, history, checkpoint, result)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(run_dir / "config.json", dict(config=config or dict(lr=0.1, seed=0), env={}))
    for epoch in range(epochs):
        runs.append_history(run_dir, dict(epoch=epoch, train_loss=1.0 / (epoch + 1)))
    if checkpoint:
        runs.save_checkpoint(run_dir / "checkpoint.pt", dict(epoch=epochs - 1, model={"w": torch.ones(2)}))
    if result:
        runs.write_json(run_dir / "result.json", dict(overall=0.5, final_epoch=epochs - 1))
    return run_dir


@pytest.fixture
def release_all():
    """Release every run directory a test claimed, even when it fails."""
    yield
    runs._release_all()


def _python(script: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


# =========================================================================== names
BAD_NAMES = ["", ".", "..", "../x", "../../x", "/abs", "/etc/passwd", "a/b", "a\\b", "a\x00b", "a\nb", "tab\tname",
             ".hidden", ".git", " x", "x ", "x" * (runs.MAX_NAME_BYTES + 1), "é" * 101]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_run_names_are_refused_and_create_nothing(tmp_path, name):
    out = tmp_path / "out"
    with pytest.raises(checks.InputError) as err:
        runs.run_path(out, name)
    assert repr(name)[:40] in one_line(err) and "e.g." in str(err.value)
    with pytest.raises(checks.InputError):
        runs.check_run_name(name)
    # what prepare_run_dir can see of the name once joined still gets refused
    joined = out / name
    if name and joined.name == name or ".." in joined.parts:
        with pytest.raises(checks.InputError):
            runs.prepare_run_dir(joined, {}, "overwrite")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [None, 3, Path("x")])
def test_run_name_must_be_a_string(name):
    with pytest.raises(checks.InputTypeError):
        runs.check_run_name(name)


@pytest.mark.parametrize("name", ["digits-lt-bs-s0", "cifar100-lt-ldam-drw-cmo-s2", "a", "v1.2_final", "x" * 200])
def test_good_run_names_pass(name):
    assert runs.check_run_name(name) == name


@pytest.mark.parametrize("label, name", [("BS + CMO", "bs-cmo"), ("LDAM-DRW", "ldam-drw"), ("CE (plain)", "ce-plain"),
                                         ("Décor 2.0", "decor-2.0"), ("  --weird//label..  ", "weird-label"),
                                         ("BS + CMO-s0", "bs-cmo-s0"), ("Syn-LT η=0.1", "syn-lt-0.1")])
def test_safe_name_is_shell_friendly_and_deterministic(label, name):
    assert runs.safe_name(label) == name == runs.safe_name(label)
    assert runs.check_run_name(name) == name


def test_safe_name_of_a_label_without_letters():
    with pytest.raises(checks.InputError, match="no letters or digits"):
        runs.safe_name("+ ++ ")


# =========================================================================== overwrite
def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, release_all):
    out = tmp_path / "out"
    docs = out / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "notes.txt").write_text("mine")
    (docs / "sub" / "deep.txt").write_text("mine too")
    with_git = out / "project"
    (with_git / ".git").mkdir(parents=True)
    (with_git / ".git" / "HEAD").write_text("ref: refs/heads/main")
    runs.write_json(with_git / "config.json", dict(config={}))  # looks like a run, but holds a .git folder
    only_json = out / "settings"
    only_json.mkdir()
    (only_json / "app.json").write_text("{}")
    before = _tree(tmp_path)
    for folder in (docs, with_git, only_json, out):  # ``out`` itself: what ``--name .`` would name
        for mode in runs.IF_EXISTS:
            with pytest.raises(runs.RunExistsError, match="not an ltkit run") as err:
                runs.prepare_run_dir(folder, {}, mode)
            one_line(err)
    assert _tree(tmp_path) == before  # nothing deleted, no lock file left behind
    assert not list(tmp_path.rglob(runs.LOCK_NAME))


def test_overwrite_refuses_a_link_and_a_file(tmp_path):
    elsewhere = fake_run(tmp_path / "elsewhere" / "run")
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    (out / "file").write_text("x")
    before = _tree(tmp_path)
    for name in ("link", "file"):
        with pytest.raises(runs.RunExistsError, match="is not a folder"):
            runs.prepare_run_dir(out / name, {}, "overwrite")
    assert _tree(tmp_path) == before


def test_overwrite_clears_an_ltkit_run(tmp_path, release_all):
    run_dir = fake_run(tmp_path / "run")
    runs.write_json(run_dir / "synthesis.json", dict(history=[]))
    (run_dir / ".checkpoint.pt.abc123.tmp").write_bytes(b"left by a kill during a save")
    assert runs.prepare_run_dir(run_dir, dict(lr=0.1, seed=0), "overwrite") == "new"
    assert [p.name for p in run_dir.iterdir()] == [runs.LOCK_NAME]
    runs.release_run_dir(run_dir)
    assert not run_dir.exists()  # an empty run directory does not outlive its claim


# =========================================================================== claiming
def test_claim_holds_a_lock_until_released(tmp_path, release_all):
    run_dir = tmp_path / "out" / "run"
    assert runs.prepare_run_dir(run_dir, {}, "error") == "new"
    info = json.loads((run_dir / runs.LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["started"]
    with pytest.raises(runs.RunInUseError, match=f"pid {os.getpid()}") as err:
        runs.prepare_run_dir(run_dir, {}, "resume")
    one_line(err)
    fake_run(run_dir, result=False)
    runs.release_run_dir(run_dir)
    runs.release_run_dir(run_dir)  # idempotent
    runs.release_run_dir(tmp_path / "never-claimed")
    assert not (run_dir / runs.LOCK_NAME).exists()
    assert runs.prepare_run_dir(run_dir, dict(lr=0.1, seed=0), "resume") == "resume"


CLAIM = """
    import sys, time
    from pathlib import Path
    from ltkit import runs
    run_dir, go = Path(sys.argv[1]), Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.01)
    try:
        status = runs.prepare_run_dir(run_dir, {}, "resume")
    except runs.RunInUseError as err:
        print("refused", err, flush=True)
        sys.exit(0)
    print("claimed", status, flush=True)
    sys.stdin.readline()  # hold the run until the test says so
    runs.release_run_dir(run_dir)
"""


def test_concurrent_claims_of_one_name_admit_exactly_one(tmp_path, release_all):
    run_dir, go = tmp_path / "out" / "same-name", tmp_path / "go"
    procs = [_python(CLAIM, str(run_dir), str(go), stdin=subprocess.PIPE) for _ in range(3)]
    go.touch()
    first = [p.stdout.readline().split() for p in procs]
    assert sorted(line[0] for line in first) == ["claimed", "refused", "refused"]
    holder = next(p for p, line in zip(procs, first) if line[0] == "claimed")
    refusals = [" ".join(line) for line in first if line[0] == "refused"]
    assert all(f"process {holder.pid} on host {socket.gethostname()}" in r for r in refusals)
    with pytest.raises(runs.RunInUseError, match=f"process {holder.pid} on host"):  # this process is refused too
        runs.prepare_run_dir(run_dir, {}, "resume")
    holder.communicate("\n", timeout=60)
    for p in procs:
        p.communicate(timeout=60)
    assert runs.prepare_run_dir(run_dir, {}, "error") == "new"  # released: free again


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, release_all):
    run_dir = tmp_path / "out" / "killed"
    proc = _python("""
        import os, signal, sys
        from pathlib import Path
        from ltkit import runs
        run_dir = Path(sys.argv[1])
        runs.prepare_run_dir(run_dir, {}, "error")
        runs.write_json(run_dir / "config.json", dict(config=dict(lr=0.1, seed=0), env={}))
        os.kill(os.getpid(), signal.SIGKILL)
    """, str(run_dir))
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((run_dir / runs.LOCK_NAME).read_text())["pid"] == proc.pid  # left behind
    with pytest.warns(UserWarning, match=rf"stale lock of process {proc.pid} on host .*killed or crashed"):
        status = runs.prepare_run_dir(run_dir, dict(lr=0.1, seed=0), "resume")
    assert status == "new"  # it died before its first checkpoint: resume starts it afresh
    assert json.loads((run_dir / runs.LOCK_NAME).read_text())["pid"] == os.getpid()


def test_without_flock_a_stale_lock_is_refused_with_its_fix(tmp_path, monkeypatch, release_all):
    monkeypatch.setattr(runs, "fcntl", None)
    run_dir = tmp_path / "run"
    assert runs.prepare_run_dir(run_dir, {}, "error") == "new"
    fd, _ = runs._HELD.pop(runs._key(run_dir))  # forget the claim: the lock now looks like another live process's
    os.close(fd)
    with pytest.raises(runs.RunInUseError, match=f"in use by process {os.getpid()} on host") as err:
        runs.prepare_run_dir(run_dir, {}, "resume")
    one_line(err)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / runs.LOCK_NAME).write_text(json.dumps(dict(pid=int(dead.stdout), host=socket.gethostname(),
                                                          started="then")))
    with pytest.raises(runs.RunInUseError, match="stale lock.*rm .*\\.lock") as err:
        runs.prepare_run_dir(run_dir, {}, "resume")
    one_line(err)


# =========================================================================== the decision
def test_run_without_checkpoint_is_retried_by_the_command_its_message_names(tmp_path, release_all):
    run_dir = tmp_path / "run"
    fake_run(run_dir, checkpoint=False, result=False, epochs=1)
    (run_dir / "history.jsonl").write_text('{"epoch": 0}\n{"epo')
    with pytest.raises(runs.RunExistsError, match=r"stopped before its first checkpoint; pass if_exists='resume' "
                                                  r"\(--resume\) to start it afresh") as err:
        runs.prepare_run_dir(run_dir, dict(lr=0.1, seed=0), "error")
    one_line(err)
    assert runs.prepare_run_dir(run_dir, dict(lr=0.2, seed=0), "resume") == "new"
    assert [p.name for p in run_dir.iterdir()] == [runs.LOCK_NAME]


def test_resume_finished_and_differing_config(tmp_path, release_all):
    config = dict(lr=0.1, seed=0)
    finished, stopped = fake_run(tmp_path / "finished"), fake_run(tmp_path / "stopped", result=False)
    assert runs.prepare_run_dir(finished, config, "resume") == "finished"
    assert not (finished / runs.LOCK_NAME).exists() and runs._key(finished) not in runs._HELD
    with pytest.raises(checks.InputError, match=r"differs in \['lr'\]") as err:
        runs.prepare_run_dir(stopped, dict(lr=0.2, seed=0), "resume")
    one_line(err)
    assert not (stopped / runs.LOCK_NAME).exists()  # an error leaves no lock
    assert runs.prepare_run_dir(stopped, dict(config, progress=False), "resume") == "resume"  # volatile field
    with pytest.raises(runs.RunExistsError, match="is finished; pass .* to get its record"):
        runs.prepare_run_dir(finished, config, "error")
    runs.release_run_dir(stopped)
    with pytest.raises(runs.RunExistsError, match="has a checkpoint; pass .* to continue it from there"):
        runs.prepare_run_dir(stopped, config, "error")
    with pytest.raises(checks.InputError, match="unknown if_exists 'replace'"):
        runs.prepare_run_dir(tmp_path / "new", config, "replace")
    assert not (tmp_path / "new").exists()


def test_a_run_recorded_before_newer_fields_existed_is_reused(tmp_path, release_all):
    """A record written before ``decoder`` / ``sync_bn`` / ``max_steps`` existed matches their defaults."""
    from ltkit import train

    config = train.preset("digits-lt", epochs=1, seed=0, name="old", out_dir=str(tmp_path), progress=False)
    train.fit(config)
    path = tmp_path / "old" / "config.json"
    record = json.loads(path.read_text())
    for field in ("decoder", "sync_bn", "max_steps", "max_test_images", "label", "verify_checksums"):
        record["config"].pop(field)
    path.write_text(json.dumps(record))
    again = train.fit(train.make_config(**{**config.to_dict(), "if_exists": "resume"}))
    assert again["result"] == json.loads((tmp_path / "old" / "result.json").read_text())
    with pytest.raises(checks.InputError, match=r"differs in \['decoder'\]"):  # a real difference still counts
        train.fit(train.make_config(**{**config.to_dict(), "if_exists": "resume", "decoder": "pil"}))


def test_resume_with_damaged_config_names_the_file(tmp_path, release_all):
    run_dir = fake_run(tmp_path / "run", result=False)
    (run_dir / "config.json").write_text('{"config": {"lr": 0.1')
    with pytest.raises(runs.RecordError, match=r"config.json is not valid JSON.*overwrite") as err:
        runs.prepare_run_dir(run_dir, dict(lr=0.1, seed=0), "resume")
    one_line(err)


# =========================================================================== safe loading
class Payload:
    """A pickle that runs code when loaded: makes a folder."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_crafted_checkpoint_is_refused_and_its_payload_does_not_run(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save(dict(epoch=0, model={"w": torch.ones(1)}, extra=Payload(marker)), path)
    for load in (runs.load_checkpoint, runs.safe_load):
        with pytest.raises(runs.UnsafeFileError) as err:
            load(path)
        assert str(path) in one_line(err) and "mkdir" in str(err.value) and "could run code" in str(err.value)
        assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: the unsafe load runs it
    assert marker.exists()


def test_ltkit_checkpoint_round_trips_under_weights_only(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    model(torch.randn(8, 4)).square().mean().backward()
    optimizer.step()
    state = dict(
        epoch=4, model=model.state_dict(), optimizer=optimizer.state_dict(),
        loss={"margins": torch.rand(3)},
        method=dict(history=[dict(epoch=0, slots=3, acceptance_rate=None, accepted_per_class=[1, 0, 2])],
                    g=model.state_dict(), start_epoch=2, fingerprint="abc"),
        config=dict(lr=0.1, milestones=[160, 180], name=None, compile=False, model_params={}, shape=(3, 32, 32)),
    )
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint(path, state)
    loaded = runs.load_checkpoint(path)
    assert loaded["config"] == state["config"] and loaded["method"]["history"] == state["method"]["history"]
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for key, buf in state["optimizer"]["state"].items():
        assert torch.equal(loaded["optimizer"]["state"][key]["momentum_buffer"], buf["momentum_buffer"])
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value) and torch.equal(loaded["method"]["g"][key], value)
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    fresh.load_state_dict(loaded["optimizer"])  # what resume does


def test_damaged_or_missing_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint(path, dict(epoch=0, model={"w": torch.ones(100)}))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(runs.CheckpointError, match="corrupt or truncated") as err:
        runs.load_checkpoint(path)
    assert str(path) in one_line(err) and isinstance(err.value, RuntimeError)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        runs.load_checkpoint(path)
    runs.save_checkpoint(path, [1, 2])
    with pytest.raises(runs.CheckpointError, match="holds a list"):
        runs.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint") as err:
        runs.load_checkpoint(tmp_path / "none.pt")
    assert "without resume" not in one_line(err)
    with pytest.raises(runs.MissingRecordError):
        runs.safe_load(tmp_path / "none.pt")


# =========================================================================== history and records
def test_history_cut_mid_line_is_made_consistent_with_the_checkpoint(tmp_path):
    run_dir = fake_run(tmp_path / "run", epochs=5, result=False)
    path = run_dir / "history.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 7])  # killed while writing epoch 4's row
    assert [r["epoch"] for r in runs.read_history(run_dir)] == [0, 1, 2, 3]
    rows = runs.truncate_history(run_dir, 3)  # resume from the checkpoint of epoch 3
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 4
    runs.append_history(run_dir, dict(epoch=3, train_loss=9.0))  # a repeated row: the last one wins
    runs.append_history(run_dir, dict(epoch=4, train_loss=0.1))
    rows = runs.truncate_history(run_dir, 3)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and rows[3]["train_loss"] == 9.0
    assert runs.read_history(run_dir) == rows


def test_a_row_appended_after_a_cut_line_starts_a_line_of_its_own(tmp_path):
    run_dir = fake_run(tmp_path / "run", epochs=2)
    path = run_dir / "history.jsonl"
    path.write_text(path.read_text()[:-5])
    runs.append_history(run_dir, dict(epoch=1, train_loss=0.5))
    assert [r["epoch"] for r in runs.read_history(run_dir, strict=False)] == [0, 1]


def test_history_missing_rows_of_checkpointed_epochs_is_an_error(tmp_path):
    run_dir = fake_run(tmp_path / "run", epochs=3)
    path = run_dir / "history.jsonl"
    first = path.read_text().splitlines(keepends=True)[0]
    path.write_text(path.read_text()[: len(first) + 10])  # cut in the middle of epoch 1's row
    before = path.read_text()
    with pytest.raises(runs.RecordError, match=r"lacks the rows of epoch\(s\) 1, 2.*overwrite") as err:
        runs.truncate_history(run_dir, 2)
    assert str(path) in one_line(err)
    assert path.read_text() == before  # nothing rewritten


def test_damaged_history_line_names_file_and_line(tmp_path):
    run_dir = fake_run(tmp_path / "run", epochs=3)
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run_dir / "history.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(runs.RecordError, match=r"history.jsonl, line 2") as err:
        runs.read_history(run_dir)
    one_line(err)
    assert [r["epoch"] for r in runs.read_history(run_dir, strict=False)] == [0, 2]


def test_load_runs_skips_damaged_runs_with_a_warning(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "good")
    fake_run(root / "unfinished", result=False)
    damage = {
        "truncated-config": lambda d: (d / "config.json").write_text('{"config": {'),
        "wrong-shape-config": lambda d: (d / "config.json").write_text("[1, 2]"),
        "no-config": lambda d: (d / "config.json").unlink(),
        "bad-result": lambda d: (d / "result.json").write_text('"done"'),
        "bad-history": lambda d: (d / "history.jsonl").write_text('{"epoch": 0}\nnot json\n{"epoch": 2}\n'),
        "cut-history": lambda d: (d / "history.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo'),
    }
    for name, damage_it in damage.items():
        damage_it(fake_run(root / name))
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run: ignored without a word")
    with pytest.warns(UserWarning) as caught:
        records = runs.load_runs(root)
    assert [r["name"] for r in records] == ["good"]
    messages = [str(w.message) for w in caught if "damaged run" in str(w.message)]
    assert len(messages) == len(damage) and all("\n" not in m for m in messages)
    for name in damage:
        assert sum(f"damaged run {root / name}:" in m for m in messages) == 1, name
    with pytest.warns(UserWarning):
        assert [r["name"] for r in runs.load_runs(root, finished_only=False)] == ["good", "unfinished"]
    with pytest.raises((runs.RecordError, runs.MissingRecordError)):
        runs.load_runs(root, strict=True)


def test_every_record_file_has_one_mode_whatever_the_umask(tmp_path, release_all):
    old = os.umask(0o077)
    try:
        run_dir = tmp_path / "run"
        runs.prepare_run_dir(run_dir, {}, "error")
        fake_run(run_dir, result=True)
        runs.truncate_history(run_dir, 1)
        runs.append_history(run_dir, dict(epoch=2))
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in run_dir.iterdir()}
    assert modes == dict.fromkeys(["config.json", "history.jsonl", "checkpoint.pt", "result.json", runs.LOCK_NAME],
                                  oct(runs.FILE_MODE))
