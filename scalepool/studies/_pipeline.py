"""A generic stage runner: stages run in order (or side by side in worker processes),
are recorded in ``stages.json`` with a key, and are skipped when a rerun finds
the same key and a valid output.  ``scalepool reproduce`` is one recipe on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._files import write_json
from ..provenance import code_version, utc_now

STATE = "stages.json"


@dataclasses.dataclass
class ParallelStage:
    """A stage for :meth:`Pipeline.run_parallel`: ``job(argument) -> (message, elapsed_s)``."""

    name: str
    key: str
    job: Callable[[Any], tuple[str, float]]
    argument: Any
    valid: Callable[[], bool] = lambda: True


def stage_key(*parts) -> str:
    """A stage's key: a hash of ``parts`` and of the code version (commit, plus a hash of
    uncommitted code changes), so a stage made by other code is redone."""
    return hashlib.sha256(
        json.dumps([code_version(), *parts], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


class Pipeline:
    """Runs stages in order, records them in ``stages.json`` and skips finished ones.

    Parameters
    ----------
    out : run folder
    force : stage names (or prefixes such as ``train`` or ``study``) to redo
    log : where progress lines go (``print`` by default)
    """

    def __init__(self, out, force=(), log: Callable[[str], None] = print):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / STATE
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.force, self.log = tuple(force), log
        self.timings: dict[str, dict] = {}
        self.total = 0
        self.index = 0

    def forced(self, name: str) -> bool:
        return any(name == f or name.startswith(f + "_") for f in self.force)

    def run(
        self, name: str, key: str, action: Callable[[], object], valid: Callable[[], bool] = lambda: True
    ):
        """Run ``action`` unless ``name`` finished before with this ``key`` and ``valid()`` holds."""
        self.index += 1
        label = f"[{self.index}/{self.total}] {name}"
        if self._up_to_date(label, name, key, valid):
            return None
        self.log(f"{label} ...")
        start = time.perf_counter()
        result = action()
        self._record(label, name, key, time.perf_counter() - start)
        return result

    def _up_to_date(self, label: str, name: str, key: str, valid: Callable[[], bool]) -> bool:
        record = self.state.get(name)
        if record and record.get("key") == key and not self.forced(name) and valid():
            self.log(f"{label}: up to date (took {record['elapsed_s']:.0f} s on {record['finished']})")
            self.timings[name] = {"elapsed_s": record["elapsed_s"], "ran": False}
            return True
        return False

    def _record(self, label: str, name: str, key: str, elapsed: float) -> None:
        self.state[name] = {"key": key, "elapsed_s": round(elapsed, 2), "finished": utc_now()}
        write_json(self.path, self.state)
        self.timings[name] = {"elapsed_s": elapsed, "ran": True}
        self.log(f"{label}: done in {elapsed:.0f} s")

    def run_parallel(self, stages: list[ParallelStage], workers: int, progress: bool = True) -> None:
        """Run independent stages, up to ``workers`` at a time in separate processes.

        Each stage's ``job(argument)`` must be a picklable module-level function
        returning ``(message, elapsed_s)``.  Finished stages are recorded as
        they complete, so an interruption loses only the ones still running
        (and those resume from their own checkpoints).  With ``workers <= 1`` or
        a single stage to run, stages run here, one after another.
        """
        todo = []
        for stage in stages:
            self.index += 1
            label = f"[{self.index}/{self.total}] {stage.name}"
            if not self._up_to_date(label, stage.name, stage.key, stage.valid):
                todo.append((label, stage))
        if workers <= 1 or len(todo) <= 1:
            for label, stage in todo:
                self.log(f"{label} ...")
                message, elapsed = stage.job(stage.argument)
                if message:
                    self.log(message)
                self._record(label, stage.name, stage.key, elapsed)
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        from tqdm.auto import tqdm

        workers = min(workers, len(todo))
        self.log(
            f"running {len(todo)} stages in {workers} worker processes: " + ", ".join(s.name for _, s in todo)
        )
        failures = []
        # spawn, not fork: a forked child would inherit this process's torch thread pools.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            running = {pool.submit(stage.job, stage.argument): (label, stage) for label, stage in todo}

            def log(line: str) -> None:  # above the bar, not through it
                with tqdm.external_write_mode():
                    self.log(line)

            bar = tqdm(total=len(todo), desc="parallel stages", unit="stage", disable=not progress)
            try:
                while running:
                    done, _ = wait(running, timeout=10.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        label, stage = running.pop(future)
                        try:
                            message, elapsed = future.result()
                        except Exception as err:  # noqa: BLE001  (reported below, after the others finish)
                            failures.append(f"{stage.name}: {type(err).__name__}: {err}")
                            log(f"{label}: failed: {type(err).__name__}: {err}")
                            continue
                        if message:
                            log(message)
                        with tqdm.external_write_mode():
                            self._record(label, stage.name, stage.key, elapsed)
                        bar.update(1)
                    active = [stage.name for future, (_, stage) in running.items() if future.running()]
                    bar.set_postfix_str("running: " + ", ".join(active) if active else "", refresh=True)
            except KeyboardInterrupt:
                # Nothing queued may start after Ctrl-C, and the running trainings stop now: their
                # checkpoints are written atomically, so the next run resumes them.
                for future in running:
                    future.cancel()
                for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public API
                    process.terminate()
                bar.close()
                raise
            bar.close()
        if failures:
            raise RuntimeError("stages failed: " + "; ".join(failures))


