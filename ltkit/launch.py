"""Run training from a notebook or script, on 1 process or N GPUs, and compare runs.

``run(config, nproc=1)`` trains in this process (tqdm progress bars in the
notebook).  ``run(config, nproc=8)`` starts ``torchrun --nproc_per_node=8 -m
ltkit.train`` in a subprocess, streams its output into the cell and returns the
same run record: a training cell scales from one to eight GPUs by changing one
number.  Multi-node: pass ``nnodes`` and ``rdzv_endpoint`` (torchrun's
rendezvous) and start the same cell on every node.

``run_grid`` trains several named configurations over several seeds and
``compare`` turns their records into one table (mean ± std by group).
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Sequence

from . import metrics, runs, stats, train


def _config(config: train.TrainConfig | str, overrides: dict) -> train.TrainConfig:
    if isinstance(config, str):
        return train.preset(config, **overrides)
    return train.make_config(**{**config.to_dict(), **overrides})


def run(config: train.TrainConfig | str = "digits-lt", /, *, nproc: int = 1, nnodes: int = 1,
        rdzv_endpoint: str | None = None, **overrides: Any) -> dict:
    """Train with ``nproc`` processes per node (GPUs, or CPU processes with gloo); returns the run record."""
    config = _config(config, overrides)
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"nproc={nproc}, nnodes={nnodes}: both must be >= 1.")
    if nproc == 1 and nnodes == 1:
        return train.fit(config)
    return _torchrun(config, nproc, nnodes, rdzv_endpoint)


def _torchrun(config: train.TrainConfig, nproc: int, nnodes: int, rdzv_endpoint: str | None) -> dict:
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun) if torchrun.exists() else "torchrun", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        command.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError("multi-node runs need rdzv_endpoint='host:port' of the first node (torchrun's rendezvous).")
        command += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config.to_dict(), f)
    command += ["-m", "ltkit.train", "--config-json", f.name]
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:  # stream torchrun's output into the cell
            print(line, end="", flush=True)
            tail = (tail + [line])[-40:]
    Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}; its last lines:\n{''.join(tail)}")
    return runs.load_run(Path(config.out_dir) / config.run_name())


Overrides = dict | Callable[[int], dict]


def run_grid(methods: dict[str, Overrides], seeds: Sequence[int] = (0, 1, 2), *, base: str = "digits-lt",
             nproc: int = 1, workers: int = 1, progress: bool = True, background: bool = False,
             interval: float = 5.0, after: dict[str, str] | None = None, pool: ProcessPoolExecutor | None = None,
             **common: Any) -> "dict[str, list[dict]] | GridJob":
    """Train every named configuration (``{label: overrides}``) for every seed.

    Runs are named ``<safe label>-s<seed>`` (``"BS + CMO"`` -> ``bs-cmo-s0``; the label itself is
    stored in the config for tables and plots) and reused when they already exist with
    the same config (``if_exists='resume'``), so re-running a cell costs nothing.
    ``overrides`` may be a function of the seed (``lambda seed: {...}``), e.g. to
    point a method at the baseline run of the same seed.  ``workers > 1`` trains
    that many single-process runs side by side in fresh Python processes (small
    models on a CPU with several cores: give each run one thread); the records
    are the same as with ``workers=1``.  One progress bar counts the runs (pass
    ``progress=False`` to hide it).

    ``background=True`` returns at once with a :class:`GridJob`: the grid trains in
    a background thread (and its worker processes) while the notebook stays
    responsive; displaying the job shows a live view of the curves by group, and
    ``job.wait()`` returns the same records as a foreground call.  The view looks for
    new epochs every ``interval`` seconds and redraws only when a run's files changed.

    ``after={"Syn-LT": "CE"}``: a Syn-LT run starts only once the CE run of its seed has
    finished (its overrides read that run).  With ``workers > 1`` such a run starts as
    soon as its baseline is done, ahead of the runs that need nothing, so the workers
    stay busy and the long dependent runs do not all wait for the end of the grid.
    ``pool`` (a spawn-context ``ProcessPoolExecutor``): train in these worker processes,
    shared with other grids (e.g. two background grids: no idle worker at a grid's end).
    """
    after = _check_after(after or {}, methods)
    jobs = _order_jobs(_grid_jobs(methods, seeds, base, common), after)  # every config is checked first
    note = reuse_note([_run_dir(config) for _, _, config in jobs]) if progress else None
    if note:
        print(note)
    if background:
        run_dirs = {label: [_run_dir(c) for lb, _, c in jobs if lb == label] for label in methods}
        return GridJob(lambda: run_grid(methods, seeds, base=base, nproc=nproc, workers=workers, progress=False,
                                        after=after, pool=pool, **common), run_dirs, interval=interval)
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1.")
    if workers > 1 and nproc > 1:
        raise ValueError("workers > 1 runs single-process runs side by side; with nproc > 1 use workers=1.")
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="runs", disable=not progress)
    done: dict[tuple[str, int], dict] = {}
    parallel = (workers > 1 or pool is not None) and sum(not _finished(config) for _, _, config in jobs) > 1
    for label, seed, config in jobs:  # sequentially: everything, or (in parallel mode) the finished runs, reused
        if not parallel or _finished(config):
            bar.set_postfix_str(f"{label}, seed {seed}")
            done[label, seed] = run(config, nproc=nproc)
            bar.update()
    if parallel:
        pending = [(label, seed, config) for label, seed, config in jobs if (label, seed) not in done]
        if pool is not None:
            _train_in_workers(pending, done, after, workers, bar, pool)
        else:
            with ProcessPoolExecutor(min(workers, len(pending)), mp_context=spawn_context()) as own:
                _train_in_workers(pending, done, after, workers, bar, own)
    bar.close()
    return {label: [done[label, seed] for seed in seeds] for label in methods}


def _check_after(after: dict[str, str], methods: dict[str, Overrides]) -> dict[str, str]:
    for label, needed in after.items():
        if label not in methods or needed not in methods:
            missing = label if label not in methods else needed
            raise ValueError(f"after={after!r}: {missing!r} is not a label of the grid ({list(methods)}).")
        if needed in after:
            raise ValueError(f"after={after!r}: {needed!r} waits for {after[needed]!r} itself; "
                             "one level of waiting only: train the chain in two grids.")
    return after


def _order_jobs(jobs: list, after: dict[str, str]) -> list:
    """Runs that wait for another one come after everything else (the order of a sequential grid)."""
    return [job for job in jobs if job[0] not in after] + [job for job in jobs if job[0] in after]


def spawn_context():
    """Worker processes are spawned: fork after torch has run threads can deadlock."""
    return multiprocessing.get_context("spawn")


def _train_in_workers(pending: list, done: dict, after: dict[str, str], workers: int, bar,
                      pool: ProcessPoolExecutor) -> None:
    """Train ``pending`` in ``pool``, at most ``workers`` runs handed out at a time: a run whose baseline
    (``after``) has finished goes first, so that a long dependent run never waits for the end of the grid."""
    running: dict = {}
    try:
        while pending or running:
            ready = [job for job in pending if (after.get(job[0]), job[1]) in done or job[0] not in after]
            ready.sort(key=lambda job: job[0] not in after)  # unblocked dependent runs first
            if not ready and not running:
                raise RuntimeError(f"runs waiting for a baseline that is not in the grid: {pending[:3]}")
            for job in ready[:workers - len(running)]:
                pending.remove(job)
                running[pool.submit(train.fit, job[2])] = job[:2]
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                done[key] = future.result()
                bar.set_postfix_str("{}, seed {}".format(*key))
                bar.update()
    except BaseException:
        for future in running:  # the runs under way finish, the rest of this grid never starts
            future.cancel()
        wait(running)
        raise


def reuse_note(run_dirs: Sequence[Path]) -> str | None:
    """One line on the finished runs a grid reuses instead of training: how many, how many came pre-built
    (unpacked from a runs archive, :func:`ltkit.room.unpack_runs`), and how to train them yourself."""
    from .room import prebuilt_runs

    finished = [Path(d) for d in run_dirs if (Path(d) / "result.json").is_file()]
    if not finished:
        return None
    folders = sorted({d.parent.as_posix() for d in finished})
    prebuilt = {p.resolve() for folder in folders for p in prebuilt_runs(folder)}
    from_archive = sum(d.resolve() in prebuilt for d in finished)
    origin = f" ({from_archive} pre-built, from a runs archive)" if from_archive else ""
    return (f"using {len(finished)} of {len(run_dirs)} runs already finished in {', '.join(folders)}/{origin}; "
            f"delete a run's folder (e.g. {finished[0].as_posix()}) to train it yourself")


def grid_run_name(label: str, seed: int) -> str:
    """The name :func:`run_grid` gives the run of ``label`` and ``seed``: ``"BS + CMO"``, 0 -> ``bs-cmo-s0``."""
    return f"{runs.safe_name(label)}-s{seed}"


def grid_config(base: str | train.TrainConfig, label: str, seed: int, overrides: dict,
                common: dict) -> train.TrainConfig:
    """The config :func:`run_grid` gives the run of ``label`` and ``seed`` (reused when it is finished)."""
    return _config(base, {"if_exists": "resume", "progress": False, **common, **overrides, "seed": seed,
                          "name": grid_run_name(label, seed), "label": label})


def _grid_jobs(methods: dict[str, Overrides], seeds: Sequence[int], base: str,
               common: dict) -> list[tuple[str, int, train.TrainConfig]]:
    return [(label, seed, grid_config(base, label, seed, _overrides(methods[label], seed), common))
            for label in methods for seed in seeds]


def _run_dir(config: train.TrainConfig) -> Path:
    return Path(config.out_dir) / config.run_name()


class GridJob:
    """A grid of runs training in the background; display it for a live view, ``wait()`` for the records."""

    def __init__(self, target: Callable[[], dict], run_dirs: dict[str, list[Path]], interval: float = 5.0) -> None:
        self.run_dirs, self.interval = run_dirs, interval
        self._records: dict | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._view = None
        self._thread = threading.Thread(target=self._work, args=(target,), daemon=True, name="ltkit-grid")
        self._thread.start()

    def _work(self, target: Callable[[], dict]) -> None:
        try:
            self._records = target()
        except BaseException as err:  # noqa: BLE001  (handed to wait())
            self._error = err
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the grid is done or ``timeout`` seconds have passed (no records, no error): ``done``."""
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> dict[str, list[dict]]:
        """Block until every run has finished; the records (the same as a foreground ``run_grid``)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the grid is still training after {timeout} s; call wait() again to keep waiting.")
        if self._view is not None:
            self._view.update()
        if self._error is not None:
            raise self._error
        return self._records

    @property
    def view(self):
        """The live view (:class:`ltkit.widgets.LiveView`): per-group accuracy and loss per method, as epochs finish."""
        if self._view is None:
            from .widgets import LiveView

            self._view = LiveView(self.run_dirs, is_done=lambda: self.done, error=lambda: self._error,
                                  interval=self.interval)
        return self._view

    def _repr_mimebundle_(self, **kwargs):
        return self.view._repr_mimebundle_(**kwargs)


def _finished(config: train.TrainConfig) -> bool:
    return (Path(config.out_dir) / config.run_name() / "result.json").is_file()


def _overrides(overrides: Overrides, seed: int) -> dict:
    return dict(overrides(seed) if callable(overrides) else overrides)


def compare(records: dict[str, list[dict]], keys: Sequence[str] = ("overall", "many", "medium", "few", "worst"),
            baselines: dict[str, str] | None = None, paired_keys: Sequence[str] = ("overall", "few")):
    """One row per label: final-epoch test accuracy (%) by group, mean ± std over seeds.

    ``baselines`` (``{label: baseline label}``, e.g. ``{"CE + CMO": "CE"}``) adds the
    paired comparison with the baseline trained on the same seeds: the mean ± std of
    the per-seed differences of ``paired_keys`` in points and a paired t-test's
    p-value (:mod:`ltkit.stats`), and the ``vs`` column naming the baseline.
    """
    table = metrics.results_table({label: [r["result"] for r in rs] for label, rs in records.items()}, keys)
    if baselines:
        columns = stats.baseline_columns(records, baselines, paired_keys)
        for name in ("vs", *(f"Δ {key}" for key in paired_keys)):
            table[name] = [columns.get(label, {}).get(name, "") for label in table.index]
    return table
