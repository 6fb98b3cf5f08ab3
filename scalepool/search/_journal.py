"""Optuna journal files that survive torn writes: a record cut short (disk full, a killed
writer) is removed before opening, and a failed append is undone at once."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from .._files import write_atomic


class StorageWriteError(OSError, ValueError):
    """Writing to the study storage failed (disk full, no permission); nothing torn is left behind."""


class JournalCorruptError(ValueError):
    """A journal file holds a line that is no JSON record and contains none."""


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

    def __init__(self, file_path: str, lock_obj) -> None:
        super().__init__(file_path, lock_obj=lock_obj)
        # our own references: optuna's attributes for them are private
        self.journal_path, self.journal_lock = str(file_path), lock_obj

    def append_logs(self, logs: list[dict]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        path = self.journal_path
        self.journal_lock.acquire()
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
            self.journal_lock.release()


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
