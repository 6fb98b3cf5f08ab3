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
- any other URL (``postgresql+psycopg://user@host:port/db``, ``mysql://...``):
  an RDB server, for workers on several machines, with heartbeats: a trial
  whose worker stopped beating is failed and queued again
  (``RetryHeartbeatStaleTrialCallback``).  Connections are checked before use
  (``pool_pre_ping``): a server that dropped an idle connection during a long
  model trial does not fail the trial's report (optuna issue #5600).  A plain
  ``postgresql://`` URL uses psycopg 3 when psycopg2 is not installed.

Every trial records its worker (``host:pid``) as a user attribute; a new
worker fails the RUNNING trials of dead processes on its host and queues their
parameters again (:func:`recover_dead_trials`), so a search killed with
SIGKILL resumes without waiting for a heartbeat and without losing a finished
trial.

Journal files survive torn writes.  A record cut short (disk full, a killed
writer) is removed before the journal is opened (:func:`repair_journal`, which
warns with the number of bytes dropped; a record that a later append glued
onto the torn one is kept), and an append that fails is undone at once and
reported as :class:`StorageWriteError` instead of optuna's
``AssertionError: Should not reach.``.

A study remembers the data it was created for (:func:`bind_study_data`: the
checksum of the prediction cache or dataset in a user attribute); a search on
other data refuses to reuse it.

:func:`optimize` reserves each trial under a lock shared by the workers of one
machine, so workers sharing a study stop exactly at the target, and it counts
only the trials its own worker finished.
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
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import TrialState

from ._journal import JournalCorruptError, _SafeJournalFileBackend, repair_journal

WORKER_ATTR = "scalepool_worker"
RETRY_ATTR = "scalepool_retry_of"
#: Study user attributes: checksum and description of the data a study was created for.
DATA_CHECKSUM_ATTR = "scalepool_data_checksum"
DATA_SOURCE_ATTR = "scalepool_data_source"
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_LOCK_ERRORS = ("database is locked", "database table is locked", "unable to open database")
#: Default heartbeat of database servers (seconds); a trial silent for twice as long is stale.
RDB_HEARTBEAT_INTERVAL = 10


class StudyDataMismatch(ValueError):
    """A study was created for other data (another prediction cache or dataset)."""


def worker_id() -> str:
    """``host:pid`` of this process, recorded in each trial's ``WORKER_ATTR`` user attribute."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _retry_callback(max_retry: int | None):
    """``(keyword, callback)`` for :class:`RDBStorage`: optuna's retry of heartbeat-stale
    trials (``RetryHeartbeatStaleTrialCallback`` since optuna 4.9, ``RetryFailedTrialCallback``
    before)."""
    new = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if new is not None:
        return "heartbeat_stale_trial_callback", new(max_retry=max_retry)
    return "failed_trial_callback", optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)


def _rdb_url(url: str) -> str:
    """``postgresql://`` (psycopg2 by default in SQLAlchemy) as ``postgresql+psycopg://`` when only
    psycopg 3 is installed (the ``postgres`` extra)."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return f"postgresql+psycopg{sep}{rest}"
    return url


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
        cost about a quarter of a fast trial's time); 0 turns them off

    Every RDB engine (SQLite included) checks a pooled connection before using it
    (SQLAlchemy ``pool_pre_ping``).
    """
    kind, target = storage_kind(spec)
    if kind == "journal":
        if Path(target).is_dir():
            raise ValueError(f"journal storage {target} is a directory, not a file")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        lock = JournalFileOpenLock(target)
        repair_journal(target, lock)
        try:
            return JournalStorage(_SafeJournalFileBackend(target, lock_obj=lock))
        except ValueError as err:  # optuna's replay of a record it cannot parse
            raise JournalCorruptError(f"{target}: the optuna journal cannot be read: {err}") from err
    engine_kwargs: dict = {"pool_pre_ping": True}
    if kind == "sqlite" and str(_sqlite_path(target)) not in ("", ":memory:"):
        _sqlite_path(target).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["creator"] = _sqlite_connector(target, timeout)
    if kind == "rdb":
        target = _rdb_url(target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        heartbeat = {}
        if heartbeat_interval is None and kind == "rdb":
            heartbeat_interval = RDB_HEARTBEAT_INTERVAL
        if heartbeat_interval:
            if heartbeat_interval < 1 or (grace_period is not None and grace_period <= heartbeat_interval):
                raise ValueError(
                    f"heartbeat interval must be >= 1 s and the grace period above it, got interval "
                    f"{heartbeat_interval} s and grace period {grace_period} s"
                )
            keyword, callback = _retry_callback(max_retry)
            heartbeat = {
                "heartbeat_interval": int(heartbeat_interval),
                "grace_period": int(grace_period or 2 * heartbeat_interval),
                keyword: callback,
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


def open_results(
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


def bind_study_data(study: optuna.Study, checksum: str, source: str) -> None:
    """Record the checksum of the data a study searches on, or refuse other data.

    A new study (or one from before checksums were recorded) gets ``checksum`` and
    ``source`` as user attributes; a study that recorded another checksum raises
    :class:`StudyDataMismatch` naming the study, both checksums and both sources.
    """
    recorded = study.user_attrs.get(DATA_CHECKSUM_ATTR)
    if recorded is None:
        _retry(lambda: study.set_user_attr(DATA_CHECKSUM_ATTR, checksum), what="study attributes")
        _retry(lambda: study.set_user_attr(DATA_SOURCE_ATTR, str(source)), what="study attributes")
        # two workers on different data may create the study together: the last write wins,
        # and the other one sees it here (``user_attrs`` reads the storage again)
        recorded = study.user_attrs.get(DATA_CHECKSUM_ATTR)
    if recorded != checksum:
        other = study.user_attrs.get(DATA_SOURCE_ATTR, "unknown data")
        raise StudyDataMismatch(
            f"study '{study.study_name}' was created for other data: {other} (checksum {recorded}), "
            f"but this search runs on {source} (checksum {checksum}); its {finished(study)} finished trials "
            "would mix results of different data. Use another --study-name or another storage"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(
    study: optuna.Study, include_own: bool = False, include_ownerless: bool = False
) -> list[int]:
    """Fail the RUNNING trials whose worker process on this host is gone, queue their
    parameters again, and return their numbers.

    A worker killed half-way through its suggestions leaves a trial with only some of
    its parameters; the retry repeats those and the sampler draws the rest.

    ``include_own`` also recovers trials of this very process (after an error
    left one RUNNING).  ``include_ownerless`` also recovers trials that never got
    their worker attribute: a worker killed (or whose disk filled) between creating
    a trial and tagging it; :func:`optimize` passes it while it holds the lock under
    which every worker of this machine creates and tags its trials.  Trials of other
    hosts are left to the RDB heartbeat.
    """
    host, me = socket.gethostname(), os.getpid()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial_worker(trial)
        if not owner:
            if not include_ownerless:
                continue
        else:
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit():
                continue
            pid = int(pid)
            if (pid == me and not include_own) or (pid != me and _pid_alive(pid)):
                continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
            failed = True
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            failed = False  # finished or failed meanwhile (a heartbeat or another worker)
        if failed:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            recovered.append(trial.number)
    return recovered


def trial_worker(trial: optuna.trial.FrozenTrial) -> str | None:
    """The ``host:pid`` that ran a trial (a user attribute; a system attribute in studies
    written by earlier scalepool versions), or ``None`` for a trial not yet tagged."""
    return trial.user_attrs.get(WORKER_ATTR) or trial.system_attrs.get(WORKER_ATTR)


def finished(study: optuna.Study) -> int:
    """Number of COMPLETE and PRUNED trials."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
