"""Fixtures: a real Airflow 3 (its own AIRFLOW_HOME and SQLite metadata database, migrated
once per session) and a real ``sender run`` daemon per test, the main project's
``.venv/bin/sender`` started as a subprocess with the HTTP trigger on a free loopback port.

Its route ``churn`` (dataset ``churn``) delivers to a local folder (``crm/``), or, with the
receiver down, to an HTTP receiver that is not listening, so every chunk is dead-lettered
after two quick attempts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TOKEN = "s3cret-token"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]  # providers/airflow/tests -> the repository
EXAMPLE = HERE.parent / "example_dags" / "churn_scores.py"


def sender_bin() -> Path:
    return Path(os.environ.get("SENDER_BIN") or REPO / ".venv" / "bin" / "sender")


def pytest_configure(config: pytest.Config) -> None:
    """Airflow reads its configuration when first imported: point it at a fresh home (no
    example DAGs, SQLite) before any test module imports it, and migrate the database."""
    home = Path(tempfile.mkdtemp(prefix="airflow-home-"))
    config.stash[_HOME] = home
    # dag.test() stores the DAG it runs by parsing the DAGs folder: the example DAG and the
    # tests' own DAGs are linked into one
    dags = home / "dags"
    dags.mkdir()
    for source in [EXAMPLE, *sorted((HERE / "dags").glob("*.py"))]:
        (dags / source.name).symlink_to(source)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        }
    )
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run(
        [str(airflow), "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=300,
    )


def load_dag(name: str) -> Any:
    """The DAG of ``<DAGs folder>/<name>.py``, imported from there as Airflow does."""
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"dag_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_HOME, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


_HOME = pytest.StashKey[Path]()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_batch(folder: Path, records: int, *, parts: int = 2) -> Path:
    """A Spark-style folder of JSONL part files with its ``_SUCCESS`` marker."""
    folder.mkdir(parents=True, exist_ok=True)
    per_part = -(-records // parts)
    for p in range(parts):
        rows = range(p * per_part, min(records, (p + 1) * per_part))
        lines = "".join(
            json.dumps({"id": f"cust-{i:06d}", "score": (i % 100) / 100, "model": "churn-v3"})
            + "\n"
            for i in rows
        )
        (folder / f"part-{p:05d}-c000.json").write_text(lines)
    (folder / "_SUCCESS").write_text("")
    return folder


@dataclass
class Daemon:
    """A running ``sender run``; ``port`` is its control server's."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes]
    config: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self, token: str | None = TOKEN) -> str:
        """An ``integration_sender`` connection to it, in AIRFLOW_CONN_* JSON form."""
        conn: dict[str, object] = {
            "conn_type": "integration_sender",
            "host": "127.0.0.1",
            "port": self.port,
        }
        if token is not None:
            conn["password"] = token
        return json.dumps(conn)

    def delivered_records(self, batch_id: str) -> int:
        """Records of the batch that reached the ``crm`` folder."""
        return sum(
            len(f.read_bytes().splitlines())
            for f in (self.folder / "crm" / "churn" / batch_id).rglob("chunk-*.ndjson")
        )

    def log(self) -> str:
        return (self.folder / "daemon.log").read_text(errors="replace")


def _config(folder: Path, port: int, *, receiver_up: bool) -> Path:
    config = folder / "sender.toml"
    # a port bound and closed again: nobody listens there
    down = f"http://127.0.0.1:{free_port()}/scores"
    target = "crm" if receiver_up else "crm_down"
    config.write_text(
        textwrap.dedent(
            f"""
            [daemon]
            ledger = "ledger.db"
            listen = "127.0.0.1:{port}"
            token = "{TOKEN}"
            # the tests' batches live in pytest's temporary folders, beside this one
            allow_uris = ["{folder.parent.parent}/"]

            [trigger]
            type = "http"

            [destinations.crm]
            type = "local"
            path = "crm"
            compression = "none"

            [destinations.crm_down]
            type = "http"
            url = "{down}"
            retry = {{ attempts = 2, initial = "5ms", max = "10ms", budget = "2s" }}

            [destinations.dead]
            type = "local"
            path = "dead"

            [routes.churn]
            datasets = ["churn"]
            chunk = {{ records = 100 }}
            targets = ["{target}"]
            dead_letter = "dead"
            """
        )
    )
    return config


def _wait_healthy(daemon: Daemon, timeout_s: float = 30.0) -> None:
    # the daemon is another process: its control server answering is the only signal
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise RuntimeError(f"sender run exited {daemon.process.returncode}:\n{daemon.log()}")
        try:
            with urllib.request.urlopen(f"{daemon.url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"sender run did not answer /healthz in {timeout_s}s:\n{daemon.log()}")


@contextlib.contextmanager
def running_daemon(folder: Path, *, receiver_up: bool = True) -> Iterator[Daemon]:
    folder.mkdir(parents=True, exist_ok=True)
    sender = sender_bin()
    if not sender.exists():
        pytest.fail(f"{sender} is missing: run `make .venv/.installed` in {REPO} first")
    port = free_port()
    config = _config(folder, port, receiver_up=receiver_up)
    env = {**os.environ, "SENDER_CONFIG": "", "NO_COLOR": "1"}
    for name in [k for k in env if k.startswith("AIRFLOW")]:
        del env[name]
    with (folder / "daemon.log").open("wb") as log:
        process = subprocess.Popen(
            [str(sender), "run", "-c", str(config)],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Daemon(folder=folder, port=port, process=process, config=config)
    try:
        _wait_healthy(running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def _daemon_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("daemon-up")) as running:
        yield running


@pytest.fixture(scope="session")
def _daemon_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("daemon-down"), receiver_up=False) as running:
        yield running


def _connect(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    if daemon.process.poll() is not None:
        raise RuntimeError(f"the shared daemon exited:\n{daemon.log()}")
    monkeypatch.setenv("AIRFLOW_CONN_INTEGRATION_SENDER_DEFAULT", daemon.connection())
    return daemon


# Starting a daemon takes a second or two, so the session shares two of them: tests use
# batch ids of their own. A test that stops its daemon asks for `own_daemon`.


@pytest.fixture
def daemon(_daemon_up: Daemon, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """A daemon whose receiver is up, as this Airflow's ``integration_sender_default``."""
    return _connect(_daemon_up, monkeypatch)


@pytest.fixture
def daemon_receiver_down(_daemon_down: Daemon, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """The same, but nobody listens at the route's receiver: every chunk is dead-lettered."""
    return _connect(_daemon_down, monkeypatch)


@pytest.fixture
def own_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """A daemon for this test alone (receiver up), which it may stop."""
    with running_daemon(tmp_path / "daemon") as running:
        yield _connect(running, monkeypatch)
