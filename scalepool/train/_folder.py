"""The run folder at the start of a session: resume, start fresh, or refuse (rank 0 decides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import BEST, CHECKPOINT, CONFIG, HISTORY, LAST, TrainError
from ._run_config import is_own_attempt
from ._state import check_resumable, load_checkpoint, writing

#: The files of a run directory, in the order an error message lists them.
RUN_FILES = (CHECKPOINT, BEST, LAST, HISTORY, CONFIG)


def open_run_folder(
    out: Path,
    paths: dict[str, Path],
    request: dict[str, Any],
    checksum: str,
    resume: bool | None,
    overwrite: bool,
) -> tuple[bool, dict[str, Any] | None]:
    """Check ``out`` against the request; ``(resumed, the checkpoint's contents or None)``.

    ``paths``: ``{file name: path}`` of :data:`RUN_FILES`; ``resume`` and ``overwrite`` as in
    :func:`scalepool.train.train`.  A fresh run's stale files are removed (the checkpoint
    first) and the folder is created.  Raises :class:`TrainError` naming the folder.
    """
    if out.exists() and not out.is_dir():
        raise TrainError(
            f"{out} is a file, not a folder: the run directory must be a folder (new or existing)"
        )
    if overwrite and resume is True:
        raise TrainError("overwrite starts a new run; it cannot be combined with resume=True")
    has_checkpoint = paths[CHECKPOINT].exists()
    if resume is True and not has_checkpoint:
        raise TrainError(f"cannot resume: {paths[CHECKPOINT]} does not exist")
    if resume is False and has_checkpoint and not overwrite:
        raise TrainError(
            f"{out} already holds a training run ({CHECKPOINT}); resume it or use a new directory"
        )
    resumed = has_checkpoint and not overwrite
    saved = None
    if resumed:
        saved = load_checkpoint(paths[CHECKPOINT])
        check_resumable(saved, request, checksum, paths[CHECKPOINT])
    else:
        found = [name for name in RUN_FILES if paths[name].exists()]
        if found and not overwrite and not is_own_attempt(paths, request, checksum):
            raise TrainError(
                f"{out} already holds files of another run ({', '.join(found)}) and no "
                f"{CHECKPOINT} to resume from; refusing to overwrite them: use a new folder, or pass "
                "--overwrite (overwrite=True) to replace that run"
            )
        # the replaced run's files (with overwrite), or those of this request's attempt
        # killed before its first checkpoint; the checkpoint goes first, so that a crash
        # from here on never resumes it beside the new run's files
        for stale in (paths[CHECKPOINT], paths[BEST], paths[LAST]):
            with writing(stale, "remove it by hand or use a new folder"):
                stale.unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrainError(f"cannot create the run directory {out}: {err.strerror or err}") from err
    return resumed, saved
