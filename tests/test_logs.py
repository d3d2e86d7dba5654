"""Log lines: for people on a terminal, JSON lines anywhere else, and forced either way by
``--log-format`` or ``[daemon] log_format``."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from sender.config import load_config
from sender.errors import ConfigError

CONFIG = """
[daemon]
ledger = "ledger.db"
{line}

[trigger]
type = "spool"
path = "queue"

[destinations.dead]
type = "local"
path = "dead"

[routes.r]
datasets = ["d"]
targets = ["dead"]
"""


def _log_a_line(config: Path, *args: str, stderr: int | None = None) -> subprocess.Popen[bytes]:
    """A process that parses ``sender [args] run -c config`` and configures logging as
    ``sender run`` does, then logs one line."""
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_AND_LOG, str(config), *args],
        stdout=subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_log_format_is_a_daemon_key_that_takes_json_or_console(tmp_path: Path) -> None:
    path = tmp_path / "sender.toml"
    path.write_text(CONFIG.format(line='log_format = "console"'))
    assert load_config(path).daemon.log_format == "console"

    path.write_text(CONFIG.format(line='log_format = "xml"'))
    with pytest.raises(ConfigError, match=r"daemon\.log_format"):
        load_config(path)


def test_on_a_terminal_logs_are_drawn_for_people(tmp_path: Path) -> None:
    config = tmp_path / "sender.toml"
    config.write_text(CONFIG.format(line=""))
    terminal, child_side = pty.openpty()
    try:
        process = _log_a_line(config, stderr=child_side)
        assert process.wait(60) == 0
        os.close(child_side)
        shown = os.read(terminal, 65536).decode()
    finally:
        os.close(terminal)

    assert "page.test_event" in shown and "answer" in shown
    assert not shown.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("args", "line", "json"),
    [
        ((), "", True),  # not a terminal
        (("--log-format", "console"), "", False),
        ((), 'log_format = "console"', False),
        (("--log-format", "json"), 'log_format = "console"', True),  # the flag wins
    ],
)
def test_the_flag_then_the_config_choose_the_format(
    tmp_path: Path, args: tuple[str, ...], line: str, json: bool
) -> None:
    config = tmp_path / "sender.toml"
    config.write_text(CONFIG.format(line=line))
    process = _log_a_line(config, *args)  # stderr is a pipe: not a terminal
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    [line_out] = [x for x in stderr.decode().splitlines() if "page.test_event" in x]
    if json:
        assert orjson.loads(line_out)["event"] == "page.test_event"
    else:
        assert not line_out.startswith("{") and "answer=42" in line_out


# parses the arguments as `sender run` would, configures logging the way it does, logs a line
_RUN_AND_LOG = """
import sys
from sender import cli
from sender.commands._common import log_format
from sender.config import load_config
from sender.log import configure_logging, get_logger
args = cli._parser().parse_args([*sys.argv[2:], "run", "-c", sys.argv[1]])
config = load_config(args.config)
configure_logging(config.daemon.log_level, log_format=log_format(args, config))
get_logger("t").info("page.test_event", answer=42)
"""


LIBRARY_ERROR = """
import logging
from sender.log import configure_logging, register_secret
configure_logging("info", json=True)
register_secret("pg-pa55word")
try:
    raise ConnectionResetError("connection to postgresql://u:pg-pa55word@db lost")
except ConnectionResetError:
    logging.getLogger("asyncpg.pool").exception("Unexpected exception in pool")
logging.getLogger("asyncio").error("Future exception was never retrieved")
logging.getLogger("asyncpg.pool").info("library chatter stays out")
"""


def test_library_tracebacks_stay_one_json_object_a_line_and_masked() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_ERROR], capture_output=True, text=True, check=True
    )
    lines = [orjson.loads(line) for line in done.stderr.splitlines()]  # each one JSON object
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("asyncpg.pool", "error"),
        ("asyncio", "error"),
    ]
    assert "ConnectionResetError" in lines[0]["exception"]
    assert "pg-pa55word" not in done.stderr
