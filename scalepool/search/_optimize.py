"""The shared trial loop: trials reserved under a per-machine lock so workers sharing a study
stop exactly at the target, each counting only its own finished trials."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sqlite3
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from . import _storage  # worker_id looked up at call time (tests stand in a dead worker)
from ._journal import StorageWriteError
from ._storage import WORKER_ATTR, _is_lock_error, _retry, finished, recover_dead_trials, storage_kind


def _storage_key(storage) -> str | None:
    """The file or URL of a storage specification (:func:`open_storage`'s argument), or ``None``
    for an in-memory storage or a storage object."""
    if not isinstance(storage, (str, os.PathLike)):
        return None
    kind, target = storage_kind(storage)
    if kind == "sqlite" and target.endswith(":memory:"):
        return None
    return str(Path(target).resolve()) if kind == "journal" else target


class _ReservationLock:
    """An exclusive ``flock`` shared by the workers of one machine on one study.

    The lock file lives in the temporary folder (named by a hash of the storage and
    the study), not beside the user's storage.  Without ``fcntl`` (Windows) or for an
    in-memory storage it does nothing.
    """

    def __init__(self, study: optuna.Study, storage=None):
        key = _storage_key(storage)
        self._path = None
        if key is not None:
            digest = hashlib.sha256(f"{key}\0{study.study_name}".encode()).hexdigest()[:20]
            self._path = Path(tempfile.gettempdir()) / f"scalepool-optuna-{digest}.lock"
        self._fd: int | None = None

    @property
    def shared(self) -> bool:
        """Whether the lock is shared with other processes (a storage file or URL, POSIX)."""
        try:
            import fcntl  # noqa: F401
        except ImportError:  # pragma: no cover - not POSIX
            return False
        return self._path is not None

    def acquire(self) -> None:
        if self._path is None or self._fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _done_and_running(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    )
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def _storage_write_error(err: BaseException) -> StorageWriteError | None:
    """A StorageWriteError behind ``err`` (optuna replaces it by an AssertionError when a tell fails)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, StorageWriteError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class _HideStorageWriteTracebacks(logging.Filter):
    """Drop optuna's "Trial N failed ... Traceback" log of a trial that a failed storage write
    ended: :func:`optimize` raises that error with its own message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _storage_write_error(record.exc_info[1]) is not None)


def _optuna_handlers() -> list[logging.Handler]:
    """The handlers that print optuna's log records (optuna's own, or the root's when optuna
    propagates): filters on a handler see the records of every optuna module."""
    optuna_logger = logging.getLogger("optuna")
    return list(optuna_logger.handlers) + (
        list(logging.getLogger().handlers) if optuna_logger.propagate else []
    )


def _fail_stale_trials(study: optuna.Study) -> None:
    """optuna's heartbeat check: fail RUNNING trials silent for the grace period and queue
    them again (the storage's retry callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def optimize(
    study: optuna.Study,
    objective,
    n_trials: int | None,
    timeout: float | None = None,
    catch: tuple = (),
    callbacks: list | None = None,
    progress: bool = False,
    storage: str | os.PathLike | None = None,
    heartbeat: bool | None = None,
) -> int:
    """Run trials until the study holds ``n_trials`` finished (COMPLETE or PRUNED)
    trials in total, or ``timeout`` seconds pass; returns the trials **this call** finished.

    ``n_trials`` counts the whole study, so a killed and restarted search, or
    several workers with the same target, stop together at the target.  Each trial
    is reserved under a lock the workers of one machine share: a worker starts a
    trial only while finished plus running trials are below the target, so two
    workers never end above it (workers on several machines sharing a database
    server may still overshoot by one trial per machine).  Lock errors of a shared
    SQLite file are retried; a trial they interrupt is failed and its parameters
    queued again.  A failed storage write raises :class:`StorageWriteError`.

    ``storage`` is the specification the study's storage was opened from
    (:func:`open_storage`): it names the reservation lock; without it (an
    in-memory study) trials are not reserved across processes.  ``heartbeat``
    says whether that storage has RDB heartbeats (default: for database servers,
    as :func:`open_storage`); then trials of workers on other machines are failed
    and queued again by optuna's heartbeat callback, and trials that never got
    their worker tag are left to it.
    """
    import sqlalchemy.exc

    start = time.monotonic()
    me = _storage.worker_id()
    lock = _ReservationLock(study, storage)
    if heartbeat is None:
        heartbeat = storage is not None and storage_kind(storage)[0] == "rdb"
    # Under the lock, a RUNNING trial without a worker is one whose worker died between
    # creating and tagging it (every worker tags its trial before it releases the lock).
    # With RDB heartbeats (workers on several machines) the heartbeat handles those.
    ownerless = lock.shared and not heartbeat
    lock.acquire()
    try:
        if heartbeat:
            _fail_stale_trials(study)
        recover_dead_trials(study, include_ownerless=ownerless)
    finally:
        lock.release()
    mine = {"finished": 0, "failed_in_a_row": 0}
    bar = None
    if progress and n_trials is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_trials, initial=finished(study), desc=study.study_name, unit="trial")

    def reserve() -> bool:
        """Take the lock and keep it (until the next trial exists) if another trial may start."""
        lock.acquire()
        if n_trials is None:
            return True
        done, running = _done_and_running(study)
        if done < n_trials <= done + running:
            # running trials of dead workers do not count: fail (and queue) them first
            if heartbeat:
                _fail_stale_trials(study)
            recover_dead_trials(study, include_ownerless=ownerless)
            done, running = _done_and_running(study)
        # stop at the target (counting the trials other workers are running), or when
        # as many trials in a row failed as are missing (nothing finishes)
        if done + running >= n_trials or mine["failed_in_a_row"] >= max(n_trials - done, 1):
            lock.release()
            return False
        return True

    def wrapped(trial: optuna.Trial) -> float:
        try:
            trial.set_user_attr(WORKER_ATTR, me)
        finally:
            lock.release()  # the trial exists (RUNNING) and is tagged: the others count it from now on
        return objective(trial)

    def after_trial(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            mine["finished"] += 1
            mine["failed_in_a_row"] = 0
            if bar is not None:
                bar.update(1)
        else:
            mine["failed_in_a_row"] += 1
        if not reserve():
            study.stop()

    hide = _HideStorageWriteTracebacks()
    handlers = _optuna_handlers()
    for handler in handlers:
        handler.addFilter(hide)
    try:
        while True:
            remaining = None if timeout is None else timeout - (time.monotonic() - start)
            if (remaining is not None and remaining <= 0) or not reserve():
                break
            try:
                # one optimize call: each trial reserves the next one in its callback
                study.optimize(
                    wrapped, n_trials=None, timeout=remaining, catch=catch,
                    callbacks=[*(callbacks or []), after_trial],
                )  # fmt: skip
                break
            except (sqlalchemy.exc.OperationalError, sqlite3.OperationalError) as err:
                if not _is_lock_error(err):
                    raise
                lock.release()
                time.sleep(0.1 + random.random() * 0.4)
                _retry(lambda: recover_dead_trials(study, include_own=True))
            except Exception as err:
                cause = _storage_write_error(err)
                if cause is not None and cause is not err:
                    raise cause from None
                raise
            finally:
                lock.release()
    finally:
        for handler in handlers:
            handler.removeFilter(hide)
        if bar is not None:
            bar.close()
    return mine["finished"]
