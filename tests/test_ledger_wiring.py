"""Which ledger ``daemon.ledger`` picks (by URL scheme, through the registry), and what
``sender config check`` says of a ledger that lacks an ability the config needs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sender.app import open_ledger
from sender.config import DaemonConfig, parse_config
from sender.errors import ConfigError
from sender.ports import Inbox, Ledger, ReplayLog
from sender_adapters.http_trigger import HttpTrigger
from sender_adapters.sqlite import SqliteLedger

# A third-party ledger that keeps batch state only: no inbox, no replay log. (A method set
# to None is "not implemented" for a Protocol, as __hash__ = None is for hashing.)
BARE_LEDGER = """
from sender_adapters.memory import MemoryLedger

class BareLedger(MemoryLedger):
    schemes = ("bare",)
    enqueue_message = claim_messages = extend_message = settle_message = get_message = None
    record_replay = replays = None
"""


@pytest.fixture
def bare_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``bare://`` served by a ledger installed as a plug-in (its own entry point); the
    folder to put on a subprocess's PYTHONPATH."""
    site = tmp_path / "site"
    info = site / "bare_ledger-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "bare_ledger.py").write_text(BARE_LEDGER)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bare-ledger\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sender.ledgers]\nbare = bare_ledger:BareLedger\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("bare_ledger", None)


def config(ledger: str, trigger: str = "spool") -> dict[str, object]:
    return {"daemon": {"ledger": ledger}, "trigger": {"type": trigger}}


def test_a_plain_path_and_sqlite_urls_open_the_sqlite_ledger(tmp_path: Path) -> None:
    assert isinstance(open_ledger(str(tmp_path / "l.db")), SqliteLedger)
    assert isinstance(open_ledger(f"sqlite://{tmp_path}/l.db"), SqliteLedger)


def test_a_plugin_ledger_is_picked_by_the_scheme_it_declares(bare_ledger: Path) -> None:
    ledger = open_ledger("bare://anything")

    assert type(ledger).__name__ == "BareLedger"
    assert isinstance(ledger, Ledger)
    assert not isinstance(ledger, Inbox) and not isinstance(ledger, ReplayLog)


def test_a_scheme_no_ledger_serves_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config("mysql://db/sender"))

    (problem,) = caught.value.problems
    assert problem.startswith("daemon.ledger: no ledger type takes mysql://")
    assert "a plain path" in problem and "sqlite://" in problem and "postgresql://" in problem
    with pytest.raises(ConfigError, match="mysql://"):
        open_ledger("mysql://db/sender")


def test_the_http_trigger_needs_a_ledger_with_an_inbox(bare_ledger: Path) -> None:
    parse_config(config("bare://x"))  # the spool trigger needs nothing of the ledger

    with pytest.raises(ConfigError) as caught:
        parse_config(config("bare://x", trigger="http"))

    assert caught.value.problems == [
        "trigger.type: the http trigger keeps its inbox in the ledger; ledger 'bare' has no inbox"
    ]


def test_config_check_fails_with_the_key_path_and_opens_no_ledger(
    bare_ledger: Path, tmp_path: Path
) -> None:
    path = tmp_path / "sender.toml"
    path.write_text(
        textwrap.dedent(
            """
            [daemon]
            ledger = "bare://x"

            [trigger]
            type = "http"
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(bare_ledger), *sys.path])}
    sender = Path(sys.executable).with_name("sender")

    done = subprocess.run(
        [str(sender), "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert "trigger.type: the http trigger keeps its inbox in the ledger; ledger 'bare'" in (
        done.stderr
    )


def test_binding_the_http_trigger_to_a_ledger_without_an_inbox_is_refused(
    bare_ledger: Path,
) -> None:
    trigger = HttpTrigger("trigger", HttpTrigger.Options(type="http"))

    with pytest.raises(ConfigError, match=r"trigger\.type: the http trigger keeps its inbox"):
        trigger.bind(open_ledger("bare://x"), DaemonConfig.model_validate({}))
    trigger.bind(
        None, DaemonConfig.model_validate({})
    )  # outside the daemon it POSTs: no ledger needed
