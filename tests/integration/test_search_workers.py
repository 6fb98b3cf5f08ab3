"""Searches shared by worker processes on a real PostgreSQL server and on a journal file.

The ``postgres_url`` fixture starts a throwaway PostgreSQL 15 server (initdb and
pg_ctl; as root they run as the system user ``scalepool_pg``) on 127.0.0.1 with
``trust`` authentication, creates a database and removes everything afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from scalepool.scales import synthetic_cache
from scalepool.search import open_storage, search_models
from scalepool.search._storage import WORKER_ATTR

PG_USER = "scalepool_pg"
PG_BIN = Path("/usr/local/bin")


def _pg_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = PG_BIN / name
    return str(candidate) if candidate.exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> str | None:
    """``None`` when not root (initdb runs as this user); as root the system user that
    runs the server, created when missing; raises ``pytest.skip`` when it cannot be."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
        return PG_USER
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        pytest.skip("PostgreSQL refuses to run as root and useradd is missing: no user to run it as")
    done = subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                          capture_output=True, text=True)  # fmt: skip
    try:  # exit 9: created meanwhile by another test process
        pwd.getpwnam(PG_USER)
    except KeyError:
        pytest.skip(f"PostgreSQL refuses to run as root and user {PG_USER} cannot be created: {done.stderr}")
    return PG_USER


@pytest.fixture(scope="module")
def postgres_url():
    """``postgresql+psycopg://postgres@127.0.0.1:PORT/scalepool`` of a throwaway server."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    psycopg = pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="scalepool-pg-"))  # /tmp: readable by the server user
    as_user = ["runuser", "-u", user, "--"] if user else []
    if user:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data, port = root / "data", _free_port()
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True, text=True)  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o", options,
                        "-w", "-t", "60", "start"], check=True, capture_output=True, text=True)  # fmt: skip
    except subprocess.CalledProcessError as err:
        shutil.rmtree(root, ignore_errors=True)
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        raise RuntimeError(f"could not start PostgreSQL: {err.stderr}{log}") from err
    try:
        with psycopg.connect(
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE scalepool")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/scalepool"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    cache = synthetic_cache(n_frames=10, n_atoms=60, n_ions=4, seed=0, true_scales=(0.0, 0.25, 0.5, 1.0))
    return cache.save(tmp_path_factory.mktemp("cache") / "pred.npz")


def _worker(args: list[str], start_together: tuple[Path, int] | None = None) -> list[str]:
    """The command of one ``scalepool`` worker process.

    ``start_together=(folder, n)``: the worker imports scalepool (the slow part of its start),
    then waits until ``n`` workers have done so before it runs the command.  Without it a
    worker that started a few seconds earlier could finish every trial alone.
    """
    code = "import sys\nfrom scalepool.cli import main\n"
    if start_together is not None:
        folder, n = start_together
        code += (
            "import os, pathlib, time\n"
            f"ready = pathlib.Path({str(folder)!r})\n"
            "(ready / f'ready-{os.getpid()}').touch()\n"
            "t0 = time.monotonic()\n"
            f"while len(list(ready.glob('ready-*'))) < {int(n)} and time.monotonic() - t0 < 120:\n"
            "    time.sleep(0.02)\n"
        )
    code += "sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *[str(a) for a in args]]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _study(storage, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat_interval=0))


@pytest.fixture(params=["postgres", "journal"])
def storage(request, tmp_path):
    if request.param == "journal":
        return str(tmp_path / "study.log")
    return request.getfixturevalue("postgres_url")


@pytest.mark.slow
def test_two_workers_finish_exactly_the_target(storage, cache_path, tmp_path):
    name = f"two-workers-{tmp_path.name}"
    args = ["search", "settings", "--pred", cache_path, "--storage", storage, "--study-name", name,
            "--space", "pool", "--n-trials", "40", "--threads", "1"]  # fmt: skip
    (barrier := tmp_path / "start").mkdir()
    workers = [subprocess.Popen(_worker([*args, "--worker", i], start_together=(barrier, 2)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env()) for i in range(2)]  # fmt: skip
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
    study = _study(storage, name)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 40  # exactly the target, nothing else
    assert sorted(t.number for t in trials) == list(range(40))  # no duplicate or missing number
    drawn = [json.dumps(t.params, sort_keys=True) for t in trials if t.params["n_inner"]]
    assert len(set(drawn)) == len(drawn)  # no parameters ran twice (n_inner=0 has a single point)
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 2  # both workers ran trials


@pytest.mark.slow
def test_killed_worker_trial_is_failed_by_heartbeat_and_run_again(postgres_url, cache_path, tmp_path):
    name = "killed-worker"

    def args(n_trials: int) -> list:
        return ["search", "settings", "--pred", cache_path, "--storage", postgres_url, "--study-name", name,
                "--space", "router", "--n-trials", str(n_trials), "--threads", "1", "--heartbeat-interval", "1",
                "--grace-period", "3"]  # fmt: skip

    # Kill a worker inside a trial that follows a finished one.  A fast trial may finish
    # between the look and the SIGKILL: then no trial is left running, and we try again.
    killed: list = []
    for _attempt in range(5):
        victim = subprocess.Popen(
            _worker(args(1000)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            time.sleep(0.3)
            assert victim.poll() is None, victim.stderr.read()
            with contextlib.suppress(KeyError):
                trials = _study(postgres_url, name).trials
                running = [t for t in trials if t.state == TrialState.RUNNING and WORKER_ATTR in t.user_attrs]
                if running and any(t.state == TrialState.COMPLETE for t in trials):
                    break
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed = [t for t in _study(postgres_url, name).trials if t.state == TrialState.RUNNING]
        if killed:
            break
    assert len(killed) == 1, f"no kill left a trial running in 5 attempts: {killed}"
    n_done = [t.state for t in _study(postgres_url, name).trials].count(TrialState.COMPLETE)
    time.sleep(4.5)  # past the grace period: the trial is stale
    rerun = subprocess.run(_worker(args(n_done + 1)), capture_output=True, text=True, timeout=240, env=_env())
    assert rerun.returncode == 0, rerun.stderr
    study = _study(postgres_url, name)
    states = {t.number: t.state for t in study.trials}
    assert states[killed[0].number] == TrialState.FAIL
    assert TrialState.RUNNING not in states.values()
    assert list(states.values()).count(TrialState.COMPLETE) == n_done + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retries = [t for t in study.trials
                   if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed[0].number]  # fmt: skip
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert {k: retries[0].params[k] for k in killed[0].params} == killed[0].params  # the same point again


class _OddPruner(optuna.pruners.BasePruner):
    """Prunes odd-numbered trials as soon as they report."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1 and bool(trial.intermediate_values)


def test_model_search_prunes_a_trial_on_postgres(postgres_url, tmp_path):
    from scalepool.models import build_branch
    from scalepool.testing._systems import random_frames

    frames = random_frames(n_atoms=12, box=8.0, n_frames=8, seed=0, triclinic=False)
    small = {"n_features": 4, "n_interactions": 1, "n_rbf": 4}
    record = search_models(
        frames, "short", postgres_url, tmp_path / "out", study_name="models-pg", space=["cutoff=float:2.5:3.5"],
        n_trials=3, epochs=2, pruner=_OddPruner(), fixed=small,
        train_options={"split_fractions": (0.5, 0.25, 0.25)}, build=lambda branch, **kw: build_branch(branch, **kw),
    )  # fmt: skip
    study = _study(postgres_url, "models-pg")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert list(study.trials[1].intermediate_values) == [1]  # pruned after its first epoch
    assert list(study.trials[0].intermediate_values) == [1, 2]
    assert all(t.user_attrs["host"] == socket.gethostname() for t in study.trials)
    assert record["best_trial"] in (0, 2) and (tmp_path / "out" / "best" / "best.pt").is_file()


def test_storage_checks_pooled_connections(postgres_url):
    """A connection the server dropped (idle timeout, restart) is replaced, not used (optuna #5600)."""
    import psycopg

    storage = open_storage(postgres_url)
    study = optuna.create_study(storage=storage, study_name="pre-ping")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    with psycopg.connect(
        f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
    ) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = 'scalepool' AND pid <> pg_backend_pid()")  # fmt: skip
    study.optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=1
    )  # would raise OperationalError without pre-ping
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
