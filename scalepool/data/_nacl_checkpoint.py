"""Resumable NaCl sampling: the checkpoint folder of :func:`scalepool.data.generate_nacl`.

With ``checkpoint=FOLDER`` the generator saves, after equilibration and then
every ``checkpoint_every`` frames, the frames sampled so far and an OpenMM
checkpoint (positions, velocities, box, step count, integrator RNG state).  A
later call with the same parameters skips set-up, minimisation and
equilibration and continues from the next frame; the folder is deleted once
the run succeeds.  A killed run loses at most the frames since its last save
(or its minimisation and equilibration when killed before the first).

Bitwise resume
--------------
Loading an OpenMM checkpoint into a fresh CPU context is not bitwise the same
as running on: the running context carries state that a checkpoint does not
hold (presumably the neighbour list, which decides the summation order), and
the difference, about 2e-7 Å after 10 steps, grows chaotically.  So the
generator ends every frame with ``Context.reinitialize(preserveState=True)``
(about 15 ms for 1,500 atoms, well under 1 % of a frame), which puts the
running context into exactly the state a resumed one starts from.  With one
thread a killed and resumed run, and a run with any checkpoint settings or
none, then give bitwise the same frames.  ``meta["resumes"]`` counts resumes;
``meta["timings"]`` sums the runs (work a killed run did after its last save
is not counted).

Layout of a checkpoint folder (by default ``OUT.npz.partial/`` beside the output)::

    parameters.json                 every argument that shapes the data, the derived
                                    step counts, the OpenMM version and the format
    frames_000000_000010.npz        frames sampled so far, one file per chunk
    state_000010.chk                OpenMM checkpoint (positions, velocities, box,
                                    step count, integrator RNG state) after frame 10
    progress.json                   the commit point: frames done, chunk files,
                                    state file, resumes, timings, parts-sum error
    lock                            held (flock) while a run uses the folder

Every file is written to a temporary name and renamed.  A save writes the chunk,
then the state, then ``progress.json``; only what ``progress.json`` names is ever
read back, so a run killed at any moment leaves a consistent checkpoint: the
last committed one.  Files that it does not name (a chunk or state written just
before the kill, temporary files) are removed on the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._files import canonical_json, write_atomic, write_json, write_npz
from . import _keys as K

try:  # POSIX only; without it two runs on one folder are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

#: Bumped whenever the folder layout or the sampling protocol changes.
FORMAT = 1
PARAMETERS = "parameters.json"
PROGRESS = "progress.json"


class CheckpointMismatch(ValueError):
    """A checkpoint folder exists but was written with other parameters."""


class CheckpointInUse(RuntimeError):
    """Another running generation holds the checkpoint folder."""


class NaclCheckpoint:
    """One checkpoint folder; use as a context manager (holds the folder's lock).

    ``identity`` is the JSON-serialisable dict that must match for a resume.
    ``restart=True`` deletes an existing folder first.
    """

    def __init__(self, folder: str | os.PathLike, identity: dict[str, Any], *, restart: bool = False):
        self.folder = Path(folder)
        self.identity = canonical_json({"format": FORMAT, **identity})
        self.restart = restart
        self._lock = None

    # ------------------------------------------------------------- open / close
    def __enter__(self) -> NaclCheckpoint:
        if self.folder.exists() and not self.folder.is_dir():
            raise FileExistsError(f"checkpoint path {self.folder} exists and is not a folder")
        if self.restart and self.folder.exists():
            self._acquire_lock()
            self._release_lock()
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._check_parameters()
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release_lock()

    def _acquire_lock(self) -> None:
        if fcntl is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / "lock", "w")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise CheckpointInUse(
                f"checkpoint {self.folder} is in use by another running generation; "
                "wait for it or stop it first"
            ) from None
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the flock
            self._lock = None

    def _check_parameters(self) -> None:
        path = self.folder / PARAMETERS
        if not path.exists() or not (self.folder / PROGRESS).exists():
            write_json(path, self.identity, sort_keys=True)  # nothing committed yet: nothing to resume
            return
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointMismatch(
                f"checkpoint {self.folder} has an unreadable {PARAMETERS} ({err}); "
                "delete the folder or pass --restart (restart=True) to start over"
            ) from err
        if stored != self.identity:
            keys = sorted(set(stored) | set(self.identity))
            diffs = [
                f"{key}: {stored.get(key, '<absent>')!r} in the checkpoint, {self.identity.get(key, '<absent>')!r} now"
                for key in keys
                if stored.get(key, "<absent>") != self.identity.get(key, "<absent>")
            ]
            raise CheckpointMismatch(
                f"checkpoint {self.folder} was written with different parameters ("
                + "; ".join(diffs)
                + "). Rerun with the same parameters to resume, or pass --restart (restart=True), "
                f"or delete {self.folder}, to discard it and start over"
            )

    # ------------------------------------------------------------------ reading
    def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes] | None:
        """The committed checkpoint, or ``None`` when there is nothing to resume.

        Returns ``(progress, frames, state)``: ``progress.json``'s dict, the
        stored frames ``{key: (frames_done, ...) array}`` and the OpenMM
        checkpoint bytes.  Files that ``progress.json`` does not name are removed.
        """
        path = self.folder / PROGRESS
        progress = json.loads(path.read_text()) if path.exists() else None
        self._remove_unreferenced(progress)
        if progress is None:
            return None
        chunks: dict[str, list] = {}
        for name in progress["chunks"]:
            with np.load(self.folder / name, allow_pickle=False) as data:
                for key in data.files:
                    chunks.setdefault(key, []).append(data[key])
        frames = {key: np.concatenate(value) for key, value in chunks.items()}
        n_loaded = len(frames[K.POSITIONS]) if frames else 0
        if n_loaded != progress["frames_done"]:
            raise ValueError(
                f"checkpoint {self.folder} is inconsistent: {n_loaded} frames stored but "
                f"{progress['frames_done']} recorded; delete it or pass --restart (restart=True)"
            )
        return progress, frames, (self.folder / progress["state"]).read_bytes()

    def _remove_unreferenced(self, progress: dict[str, Any] | None) -> None:
        keep = {PARAMETERS, PROGRESS, "lock"}
        if progress is not None:
            keep |= set(progress["chunks"]) | {progress["state"]}
        for entry in self.folder.iterdir():
            if entry.name not in keep and entry.is_file():
                entry.unlink()

    # ------------------------------------------------------------------ writing
    def save(
        self,
        *,
        frames_done: int,
        new_frames: dict[str, np.ndarray],
        state: bytes,
        progress: dict[str, Any],
        previous: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Commit ``new_frames`` ({key: stacked array of the frames since ``previous``})
        and the OpenMM ``state``.

        ``progress`` holds the bookkeeping (resumes, timings, parts error); the
        committed dict (without arrays) is returned for the next save.
        """
        chunks = list(previous["chunks"]) if previous else []
        start = previous["frames_done"] if previous else 0
        if frames_done > start:
            name = f"frames_{start:06d}_{frames_done:06d}.npz"
            # forces are float32 in the final dataset anyway, so storing them so loses nothing
            arrays = {
                key: np.asarray(value).astype(np.float32 if key.startswith(K.FORCES) else np.float64)
                for key, value in new_frames.items()
            }
            write_npz(self.folder / name, arrays)
            chunks.append(name)
        state_name = f"state_{frames_done:06d}.chk"
        write_atomic(self.folder / state_name, state)
        committed = {**progress, "frames_done": frames_done, "chunks": chunks, "state": state_name}
        write_json(self.folder / PROGRESS, committed, sort_keys=True)
        if previous and previous["state"] != state_name:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / previous["state"]).unlink()
        return committed

    def remove(self) -> None:
        """Delete the folder (after the final dataset is safely written)."""
        self._release_lock()
        shutil.rmtree(self.folder, ignore_errors=True)


def sample_frames(
    context,
    integrator,
    frame,
    *,
    n_frames: int,
    stride_steps: int,
    store: NaclCheckpoint | None,
    resumed: tuple[dict[str, Any], dict[str, np.ndarray], bytes] | None,
    book: dict[str, Any],
    checkpoint_every: int,
    progress: bool,
    run_start: float,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Sample frames ``frames_done .. n_frames - 1``, committing to ``store`` as it goes.

    ``context`` is at a frame boundary: just equilibrated and reinitialised, or
    (with ``resumed`` from :meth:`NaclCheckpoint.load`) about to load the saved
    state.  ``frame(context)`` returns ``({key: array}, parts_error)`` for one
    frame.  ``book`` holds this run's bookkeeping (``resumes``, ``parts_error``,
    ``timings``); on a resume it is merged into the stored one.

    Returns ``({key: (n_frames, ...) array}, book)``.
    """
    if resumed is None:
        committed, chunks, done = None, [], 0
    else:
        committed, stored, state = resumed
        chunks, done = ([stored] if stored else []), committed["frames_done"]
        context.loadCheckpoint(state)
        setup_s = book["timings"]["setup_s"]
        book = {key: committed[key] for key in ("resumes", "parts_error", "timings")}
        book["resumes"] += 1
        book["timings"]["setup_s"] += setup_s
    base = dict(book["timings"])
    sample_start = time.perf_counter()
    pending: dict[str, list] = {}

    def clock() -> None:
        now = time.perf_counter()
        book["timings"]["sample_s"] = base["sample_s"] + (now - sample_start)
        book["timings"]["wall_s"] = base["wall_s"] + (now - run_start)

    def take_pending() -> dict[str, np.ndarray]:
        nonlocal pending
        new = {key: np.asarray(values) for key, values in pending.items()}
        pending = {}
        if new:
            chunks.append(new)
        return new

    def commit(frames_done: int) -> None:
        nonlocal committed
        clock()
        state = context.createCheckpoint()
        committed = store.save(
            frames_done=frames_done, new_frames=take_pending(), state=state, progress=book, previous=committed
        )

    if store is not None:
        commit(done)  # the state after equilibration, or the new resume count
    with tqdm(total=n_frames, initial=done, desc="nacl frames", unit="frame", disable=not progress) as bar:
        for i in range(done, n_frames):
            integrator.step(stride_steps)
            arrays, parts_error = frame(context)
            book["parts_error"] = max(book["parts_error"], parts_error)
            for key, value in arrays.items():
                pending.setdefault(key, []).append(value)
            # Each frame ends on a freshly initialised context, the state a
            # resumed run starts from, so resuming changes no bit of the result.
            context.reinitialize(preserveState=True)
            if store is not None and ((i + 1) % checkpoint_every == 0 or i + 1 == n_frames):
                commit(i + 1)
            bar.update(1)
    clock()
    take_pending()
    frames = {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}
    return frames, book
