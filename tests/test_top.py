"""``sender top``: the daemon's status in a terminal, read from the daemon the config names.

The daemon runs in the test's event loop (a slow receiver, a destination that is down);
``sender top --once`` runs as a user would run it, in a process of its own.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from sender.testing.receiver import Receiver
from sender.top import render_frame, sparkline
from tests.brokers import free_port
from tests.test_page import TOKEN, batch_in, page_daemon, write_page_config


async def _top(config: Path, *args: str) -> tuple[int, str, str]:
    """``sender top --once -c config`` in a process of its own: exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "SENDER_CONFIG")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sender.cli",
        "top",
        "--once",
        "-c",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_top_once_shows_the_running_batch_and_each_destinations_circuit_in_80_columns(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.slow(2.0)  # the batch runs for 24 s; top starts and reads well within that
    listen = f"127.0.0.1:{free_port()}"
    async with page_daemon(tmp_path, receiver, token=TOKEN, listen=listen) as page:
        await page.send_batch("churn-top")
        await page.wait_status(
            lambda doc: (
                (batch_in(doc, "churn-top") or {}).get("state") == "running"
                and "partner_api" in doc["summary"]["open_circuits"]
            )
        )
        code, out, err = await _top(tmp_path / "sender.toml")

    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    assert lines[0].startswith(f"sender top · {listen}")
    [batch] = [line for line in lines if line.startswith("churn-top")]
    assert "running" in batch.split()
    [partner] = [line for line in lines if line.startswith("partner_api ")]
    [scores] = [line for line in lines if line.startswith("scores_api ")]
    assert partner.split()[1] == "open" and scores.split()[1] == "closed"
    assert any("partner_api:" in line and "connection refused" in line for line in lines)
    assert TOKEN not in out


async def test_top_says_so_and_exits_1_when_no_daemon_answers(
    tmp_path: Path, receiver: Receiver
) -> None:
    port = free_port()
    config = write_page_config(tmp_path, receiver.url, listen=f"127.0.0.1:{port}")

    code, out, err = await _top(config)

    assert code == 1
    assert out == ""
    assert f"no daemon answers at http://127.0.0.1:{port}/v1/status" in err
    assert len(err.strip().splitlines()) == 1


async def test_top_with_a_token_the_daemon_refuses_is_a_config_error(
    tmp_path: Path, receiver: Receiver
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    async with page_daemon(tmp_path / "daemon", receiver, token=TOKEN, listen=listen):
        wrong = write_page_config(tmp_path, receiver.url, token="not-the-token", listen=listen)
        code, _, err = await _top(wrong)

    assert code == 2
    assert "daemon.token" in err and "401" in err
    assert "not-the-token" not in err


def test_a_frame_fits_the_width_it_is_given_with_long_names_and_errors() -> None:
    from rich.console import Console

    doc = {
        "generated_at": 0.0,
        "version": "0.1.0",
        "daemon": {"uptime_s": 5.0, "delivered_since_start": 12},
        "summary": {"running": 1, "records_per_s": 3.5, "open_circuits": ["x" * 60]},
        "batches": [
            {
                "batch_id": "b" * 70,
                "state": "running",
                "records": {"read": 10, "delivered": 5, "dead_lettered": 1, "rejected": 0},
                "throughput_rps": 1.0,
                "elapsed_s": 3.0,
            }
        ],
        "destinations": [
            {
                "name": "d" * 50,
                "circuit": "half_open",
                "in_flight": 2,
                "concurrency": 8,
                "ratelimit_waits": 3,
                "retries": 4,
                "latency_p50_s": 0.01,
                "latency_p95_s": 0.2,
                "last_error": "HTTP 503: " + "e" * 200,
                "last_error_at": 0.0,
            }
        ],
        "dead_letters": {"since_start": {"dead": {"chunks": 1, "records": 1}}},
        "problems": ["ledger: " + "unreachable " * 20],
        "throughput": {"step_s": 2.0, "records_per_s": [0.0, 1.0, 5.0, 2.0] * 40},
    }
    console = Console(width=80, record=True, color_system=None)
    with console.capture() as captured:
        console.print(render_frame(doc, address="127.0.0.1:8080", width=80))

    lines = captured.get().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any("half-open" in line for line in lines)
    assert lines[2].startswith("! ledger: unreachable") and lines[2].endswith("…")
    assert any(line.endswith("…") and "HTTP 503" in line for line in lines)


def test_the_sparkline_squeezes_history_into_the_width() -> None:
    assert sparkline([0, 0, 4, 8], 4) == "  ▄█"
    assert len(sparkline([1.0] * 150, 60)) == 60
    assert sparkline([], 10) == ""
    assert sparkline([1.0, 2.0], 60) == "▄█"  # fewer values than columns: one each
