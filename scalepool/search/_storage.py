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

import hashlib
import json
import logging
import os
import random
import socket
import sqlite3
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from .._files import write_atomic

WORKER_ATTR = "scalepool_worker"
RETRY_ATTR = "scalepool_retry_of"
#: Study user attributes: checksum and description of the data a study was created for.
DATA_CHECKSUM_ATTR = "scalepool_data_checksum"
DATA_SOURCE_ATTR = "scalepool_data_source"
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_LOCK_ERRORS = ("database is locked", "database table is locked", "unable to open database")


class StorageWriteError(OSError, ValueError):
    """Writing to the study storage failed (disk full, no permission); nothing torn is left behind."""


class StudyDataMismatch(ValueError):
    """A study was created for other data (another prediction cache or dataset)."""


class JournalCorruptError(ValueError):
    """A journal file holds a line that is no JSON record and contains none."""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------- journal files
_RECORD_START = b'{"op_code":'


def _salvage(line: bytes) -> bytes | None:
    """The complete record at the end of a line that starts with a torn one, or ``None``."""
    start = line.rfind(_RECORD_START)
    while start > 0:
        try:
            if isinstance(json.loads(line[start:]), dict):
                return line[start:]
        except ValueError:
            pass
        start = line.rfind(_RECORD_START, 0, start)
    return None


def repair_journal(path: str | os.PathLike, lock: JournalFileOpenLock | None = None) -> int:
    """Remove torn records from an optuna journal file; returns the number of bytes dropped.

    A record cut short by a failed write (disk full) or a killed writer is an
    incomplete last line; a later append glues its record onto it.  Both are
    repaired: the incomplete tail is truncated, and of a glued line only the
    complete record at its end is kept, so every complete trial survives.  A line
    that holds no record at all raises :class:`JournalCorruptError` naming it.
    Runs under the journal's own lock; warns (RuntimeWarning) when it dropped bytes.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    lock = lock or JournalFileOpenLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: a torn record, or b""
        kept, dropped, repaired = [], len(tail), []
        for number, line in enumerate(lines, start=1):
            try:
                json.loads(line)
                kept.append(line)
                continue
            except ValueError:
                pass
            record = b"" if not line.strip() else _salvage(line)
            if record is None:
                raise JournalCorruptError(
                    f"{path}: line {number} of the optuna journal is not a JSON record and holds none "
                    f"(it starts {line[:60]!r}); the file is corrupt beyond a torn write"
                )
            dropped += len(line) - len(record) + (0 if record else 1)
            repaired.append(number)
            if record:
                kept.append(record)
        if not dropped:
            return 0
        try:
            if not repaired:
                os.truncate(path, len(data) - len(tail))  # in place: other workers' offsets stay valid
            else:
                write_atomic(path, b"".join(line + b"\n" for line in kept))  # the old file stays on error
        except OSError as err:
            raise StorageWriteError(
                f"{path}: cannot repair the torn optuna journal ({err.strerror or err}); the file is unchanged: "
                "free space and run the same command again"
            ) from err
    finally:
        lock.release()
    where = f"an incomplete last record ({len(tail)} bytes)" if tail else ""
    if repaired:
        where += (" and " if where else "") + f"torn records glued to line(s) {repaired[:10]}"
    warnings.warn(
        f"{path}: repaired the optuna journal: dropped {dropped} bytes of {where} left by a write cut short "
        f"(disk full or a killed worker); all {len(kept)} complete records are kept",
        RuntimeWarning,
        stacklevel=2,
    )
    return dropped


class _SafeJournalFileBackend(JournalFileBackend):
    """optuna's journal file whose appends never leave a torn record: a failed append is
    truncated away at once and raised as :class:`StorageWriteError`, and a torn tail left
    by a killed writer is removed before the next append."""

    def append_logs(self, logs: list[dict]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        path = self._file_path
        self._lock.acquire()
        try:
            size = _drop_torn_tail(path)
            try:
                _append_bytes(path, data)
            except BaseException as err:
                try:
                    os.truncate(path, size)
                except OSError:
                    pass
                if isinstance(err, OSError):
                    raise StorageWriteError(
                        f"{path}: appending to the optuna journal failed ({err.strerror or err}); the partial "
                        "record was removed and every finished trial is intact: free space (or fix the "
                        "permissions) and run the same command again to continue"
                    ) from err
                raise
        finally:
            self._lock.release()


def _append_bytes(path: str, data: bytes) -> None:
    """Append ``data`` to the journal and flush it to disk (optuna's own append; one call)."""
    with open(path, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _drop_torn_tail(path: str) -> int:
    """Truncate bytes after the last newline (a torn record of a killed writer); returns the size."""
    size = os.path.getsize(path)
    if not size:
        return 0
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return size
        position = size
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
    os.truncate(path, position)
    warnings.warn(
        f"{path}: dropped {size - position} bytes of a torn journal record (a writer was killed mid-write)",
        RuntimeWarning,
        stacklevel=3,
    )
    return position


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
        if Path(target).is_dir():
            raise ValueError(f"journal storage {target} is a directory, not a file")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        lock = JournalFileOpenLock(target)
        repair_journal(target, lock)
        try:
            return JournalStorage(_SafeJournalFileBackend(target, lock_obj=lock))
        except ValueError as err:  # optuna's replay of a record it cannot parse
            raise JournalCorruptError(f"{target}: the optuna journal cannot be read: {err}") from err
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
        # and the other one sees it here
        recorded = study._storage.get_study_user_attrs(study._study_id).get(DATA_CHECKSUM_ATTR)
    if recorded != checksum:
        other = study._storage.get_study_user_attrs(study._study_id).get(DATA_SOURCE_ATTR, "unknown data")
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
        owner = trial.system_attrs.get(WORKER_ATTR)
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


def _storage_key(storage) -> str | None:
    """The file or URL behind an optuna storage (through optuna's caching wrapper), or ``None``."""
    for _ in range(3):
        if storage is None:
            return None
        url = getattr(storage, "url", None)
        if isinstance(url, str):
            return url
        path = getattr(storage, "_file_path", None)
        if isinstance(path, str):
            return str(Path(path).resolve())
        storage = getattr(storage, "_backend", None)
    return None


class _ReservationLock:
    """An exclusive ``flock`` shared by the workers of one machine on one study.

    The lock file lives in the temporary folder (named by a hash of the storage and
    the study), not beside the user's storage.  Without ``fcntl`` (Windows) or for an
    in-memory storage it does nothing.
    """

    def __init__(self, study: optuna.Study):
        key = _storage_key(study._storage)
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


_OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"


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
    trials in total, or ``timeout`` seconds pass; returns the trials **this call** finished.

    ``n_trials`` counts the whole study, so a killed and restarted search, or
    several workers with the same target, stop together at the target.  Each trial
    is reserved under a lock the workers of one machine share: a worker starts a
    trial only while finished plus running trials are below the target, so two
    workers never end above it (workers on several machines sharing a database
    server may still overshoot by one trial per machine).  Lock errors of a shared
    SQLite file are retried; a trial they interrupt is failed and its parameters
    queued again.  A failed storage write raises :class:`StorageWriteError`.
    """
    import sqlalchemy.exc

    start = time.monotonic()
    me = worker_id()
    lock = _ReservationLock(study)
    # Under the lock, a RUNNING trial without a worker is one whose worker died between
    # creating and tagging it (every worker tags its trial before it releases the lock).
    # With RDB heartbeats (workers on several machines) the heartbeat handles those.
    ownerless = lock.shared and getattr(study._storage, "get_heartbeat_interval", lambda: None)() is None
    lock.acquire()
    try:
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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # RDB heartbeats; no-op otherwise
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
            study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, me)
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
    logging.getLogger(_OPTUNA_TRIAL_LOGGER).addFilter(hide)
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
        logging.getLogger(_OPTUNA_TRIAL_LOGGER).removeFilter(hide)
        if bar is not None:
            bar.close()
    return mine["finished"]
