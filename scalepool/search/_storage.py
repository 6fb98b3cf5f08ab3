"""Optuna storage, studies that survive killed workers, and trial loops that share a database.

Storage specifications (:func:`open_storage`):

- a path ending in ``.db``/``.sqlite``/``.sqlite3`` or a ``sqlite:///path``
  URL: SQLite through :class:`optuna.storages.RDBStorage`.  Writers wait up
  to ``timeout`` seconds for the database lock instead of failing with
  "database is locked", the file uses write-ahead logging (readers never
  block the writer) without an fsync per commit (1.5x faster trials);
- a path ending in ``.log``/``.journal``/``.jsonl`` or ``journal:///path``: a
  journal file (:class:`optuna.storages.JournalStorage`), the recommended
  backend for parallel workers on one machine;
- any other URL (``postgresql://...``, ``mysql://...``): an RDB server, for
  workers on several machines, with heartbeats: a trial whose worker stopped
  beating is failed and queued again.

Every trial records its worker (``host:pid``) as a system attribute; a new
worker fails the RUNNING trials of dead processes on its host and queues their
parameters again (:func:`recover_dead_trials`), so a search killed with
SIGKILL resumes without waiting for a heartbeat and without losing a finished
trial.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

WORKER_ATTR = "scalepool_worker"
RETRY_ATTR = "scalepool_retry_of"
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_LOCK_ERRORS = ("database is locked", "database table is locked", "unable to open database")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def storage_kind(spec: str | os.PathLike) -> tuple[str, str]:
    """``(kind, target)``: kind ``"sqlite"``, ``"journal"`` or ``"rdb"`` and the URL or path."""
    text = str(spec)
    if text.startswith("journal:///"):
        return "journal", text[len("journal://") :]
    if text.startswith("sqlite:///"):
        return "sqlite", text
    if "://" in text:
        return "rdb", text
    path = Path(text).expanduser().resolve()
    if path.suffix in _JOURNAL_SUFFIXES:
        return "journal", str(path)
    if path.suffix in _SQLITE_SUFFIXES:
        return "sqlite", f"sqlite:///{path}"
    raise ValueError(
        f"cannot tell the storage kind of {text!r}: use a .db file (SQLite), a .log file (journal), "
        "or a URL such as sqlite:///study.db, journal:///study.log, postgresql://host/db"
    )


def _is_lock_error(err: BaseException) -> bool:
    return any(text in str(err).lower() for text in _LOCK_ERRORS)


def _sqlite_path(url: str) -> Path:
    return Path(url[len("sqlite:///") :])


def _sqlite_connector(url: str, timeout: float):
    """A DB-API connection factory for a SQLite file: lock timeout, write-ahead log,
    ``synchronous=NORMAL`` (no fsync per commit; a killed process loses nothing,
    only an operating-system crash may drop the last commits)."""
    path = _sqlite_path(url)

    def connect():
        connection = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return connect


def _retry(action, attempts: int = 20, what: str = "storage"):
    """Run ``action()`` again after lock errors and creation races (random back-off)."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return action()
        except (
            sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.IntegrityError,
            sqlite3.OperationalError,
        ) as err:
            if attempt == attempts - 1 or not (
                _is_lock_error(err) or isinstance(err, sqlalchemy.exc.IntegrityError) or "exists" in str(err)
            ):
                raise
        except optuna.exceptions.DuplicatedStudyError:
            if attempt == attempts - 1:
                raise
        time.sleep(0.05 + random.random() * 0.2 * (attempt + 1))
    raise RuntimeError(f"could not open the {what}")  # pragma: no cover


def open_storage(
    spec: str | os.PathLike,
    timeout: float = 120.0,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 3,
) -> optuna.storages.BaseStorage:
    """An optuna storage from a path or URL (see the module docstring).

    Parameters
    ----------
    timeout : seconds a SQLite writer waits for the lock
    heartbeat_interval, grace_period : RDB heartbeats (s); a RUNNING trial without
        a heartbeat for ``grace_period`` (default 2 x interval) is failed and,
        up to ``max_retry`` times, queued again.  Default: 10 s for database
        servers (workers on several machines), off for SQLite, whose workers
        share one machine and are recovered by process id at once (heartbeats
        cost about a quarter of a fast trial's time)
    """
    kind, target = storage_kind(spec)
    if kind == "journal":
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(target, lock_obj=JournalFileOpenLock(target)))
    engine_kwargs = {}
    if kind == "sqlite" and str(_sqlite_path(target)) not in ("", ":memory:"):
        _sqlite_path(target).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"creator": _sqlite_connector(target, timeout)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        heartbeat = {}
        if heartbeat_interval is None and kind == "rdb":
            heartbeat_interval = 10
        if heartbeat_interval:
            heartbeat = {
                "heartbeat_interval": int(heartbeat_interval),
                "grace_period": int(grace_period or 2 * heartbeat_interval),
                "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            }
        return _retry(lambda: RDBStorage(target, engine_kwargs=engine_kwargs, **heartbeat))


def sampler_seed(seed: int, study: optuna.Study, worker: int | None = None) -> int:
    """A sampler seed from the user's seed, the trials already stored and the worker.

    One worker resuming a study gets a seed that depends only on ``seed`` and
    the number of stored trials (reproducible); workers that start beside
    running ones (or name distinct ``worker`` indices) get distinct seeds, so
    they do not propose the same random start-up trials.
    """
    trials = study.get_trials(deepcopy=False)
    if worker is None:
        running = any(t.state == TrialState.RUNNING for t in trials)
        worker = os.getpid() if running else 0
    state = np.random.SeedSequence([int(seed), len(trials), int(worker)]).generate_state(1)
    return int(state[0] % (2**31 - 1))


def open_study(
    storage,
    study_name: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    direction: str = "minimize",
) -> optuna.Study:
    """Create the study or load it when it exists (``load_if_exists``), safe against a
    second worker creating it at the same moment."""
    return _retry(
        lambda: optuna.create_study(
            storage=storage,
            study_name=study_name,
            sampler=sampler,
            pruner=pruner,
            direction=direction,
            load_if_exists=True,
        ),
        what="study",
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(study: optuna.Study, include_own: bool = False) -> list[int]:
    """Fail the RUNNING trials whose worker process on this host is gone, queue their
    parameters again, and return their numbers.

    A worker killed half-way through its suggestions leaves a trial with only some of
    its parameters; the retry repeats those and the sampler draws the rest.

    ``include_own`` also recovers trials of this very process (after an error
    left one RUNNING).  Trials of other hosts are left to the RDB heartbeat.
    """
    host, me = socket.gethostname(), os.getpid()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.system_attrs.get(WORKER_ATTR)
        if not owner:
            continue
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host:
            continue
        pid = int(pid)
        if (pid == me and not include_own) or (pid != me and _pid_alive(pid)):
            continue
        try:
            failed = study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            failed = False  # finished or failed meanwhile (a heartbeat or another worker)
        if failed:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            recovered.append(trial.number)
    return recovered


def finished(study: optuna.Study) -> int:
    """Number of COMPLETE and PRUNED trials."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def optimize(
    study: optuna.Study,
    objective,
    n_trials: int | None,
    timeout: float | None = None,
    catch: tuple = (),
    callbacks: list | None = None,
    progress: bool = False,
) -> int:
    """Run trials until the study holds ``n_trials`` finished (COMPLETE or PRUNED)
    trials in total, or ``timeout`` seconds pass; returns the trials this call finished.

    ``n_trials`` counts the whole study, so a killed and restarted search, or
    several workers with the same target, stop together at the target.  Lock
    errors of a shared SQLite file are retried; a trial they interrupt is failed
    and its parameters queued again.
    """
    import sqlalchemy.exc

    recover_dead_trials(study)
    start, before = time.monotonic(), finished(study)
    me = worker_id()

    def wrapped(trial: optuna.Trial) -> float:
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, me)
        return objective(trial)

    stop = [optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    while n_trials is None or finished(study) < n_trials:
        remaining = None if timeout is None else timeout - (time.monotonic() - start)
        if remaining is not None and remaining <= 0:
            break
        at_start = finished(study)
        try:
            study.optimize(
                wrapped,
                n_trials=None if n_trials is None else max(n_trials - finished(study), 1),
                timeout=remaining,
                catch=catch,
                callbacks=[*(stop if n_trials is not None else []), *(callbacks or [])],
                show_progress_bar=progress,
            )
            if n_trials is None or finished(study) == at_start:
                break  # no target, or nothing finishes (every trial failed)
        except (sqlalchemy.exc.OperationalError, sqlite3.OperationalError) as err:
            if not _is_lock_error(err):
                raise
            time.sleep(0.1 + random.random() * 0.4)
            _retry(lambda: recover_dead_trials(study, include_own=True))
    return finished(study) - before
