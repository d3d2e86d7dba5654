"""The ``sender`` command as a shell runs it: exit codes, what goes to stdout and stderr, and
output that fits an 80-column terminal. Each test runs the installed ``sender`` script in a
subprocess (the receivers keep serving in the test's event loop meanwhile)."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from sender.app import App
from sender.config import load_config
from sender.model import TriggerMessage
from sender.testing.receiver import Receiver
from tests.batches import write_batch
from tests.plugins import write_plugin

SENDER = str(Path(sys.executable).with_name("sender"))
FAST_RETRY = '{ attempts = 2, initial = "5ms", max = "10ms", budget = "5s" }'


async def sender(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run ``sender ARGS`` on an 80-column "terminal"; exit code, stdout, stderr."""
    env = {**os.environ, "COLUMNS": "80", "SENDER_CONFIG": ""}
    process = await asyncio.create_subprocess_exec(
        SENDER,
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_config(folder: Path, url: str, *, extra: str = "") -> Path:
    config = folder / "sender.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [daemon]
            ledger = "ledger.db"

            [trigger]
            type = "spool"
            path = "queue"

            [destinations.api]
            type = "http"
            url = "{url}"
            compression = "zstd"
            retry = {FAST_RETRY}

            [destinations.dead]
            type = "local"
            path = "dead"

            [routes.churn]
            datasets = ["churn"]
            chunk = {{ records = 400 }}
            targets = ["api"]
            dead_letter = "dead"
            """
        )
        + textwrap.dedent(extra)
    )
    return config


def fits_80_columns(text: str) -> bool:
    return all(len(line) <= 80 for line in text.splitlines())


async def test_send_exits_0_when_every_chunk_is_delivered(
    tmp_path: Path, receiver: Receiver
) -> None:
    batch = write_batch(tmp_path / "batch", 1000)
    config = write_config(tmp_path, receiver.url + "/scores")

    code, out, _ = await sender(
        "send", str(batch), "--dataset", "churn", "--batch-id", "b-ok", "-c", str(config)
    )

    assert code == 0
    assert "batch b-ok: complete" in out
    assert "read 1,000 = delivered 1,000 + dead-lettered 0 + rejected 0" in out
    assert len(receiver.unique_records()) == 1000


async def test_send_exits_1_when_chunks_are_dead_lettered(
    tmp_path: Path, receiver: Receiver
) -> None:
    batch = write_batch(tmp_path / "batch", 1000)
    config = write_config(tmp_path, receiver.url + "/scores")
    receiver.fail_always(503)

    code, out, _ = await sender(
        "send", str(batch), "--dataset", "churn", "--batch-id", "b-down", "--json", "-c",
        str(config),
    )  # fmt: skip

    assert code == 1
    outcome = orjson.loads(out)
    assert outcome["state"] == "complete"
    assert outcome["records"]["dead_lettered"] == 1000


async def test_send_exits_2_on_usage_and_config_errors(
    tmp_path: Path, closed_port_url: str
) -> None:
    batch = write_batch(tmp_path / "batch", 10)
    config = write_config(tmp_path, closed_port_url)

    code, _, err = await sender(
        "send", str(batch), "--dataset", "churn", "--route", "nope", "-c", str(config)
    )
    assert code == 2 and "--route: unknown routes ['nope']" in err

    code, _, err = await sender("send", str(batch), "--dataset", "churn", "-c", "missing.toml")
    assert code == 2 and "missing.toml: no such config file" in err

    code, _, err = await sender("send", str(batch), "-c", str(config))  # no --dataset
    assert code == 2 and "--dataset" in err

    for bad, reason in [("a/b", "contain no '/'"), ("é" * 101, "202 bytes in UTF-8")]:
        code, out, err = await sender(
            "send", str(batch), "--dataset", "churn", "--batch-id", bad, "-c", str(config)
        )
        assert code == 2 and "--batch-id: " in err and reason in err
        assert "Traceback" not in out + err


async def test_config_check_names_every_bad_key_path_and_exits_2(tmp_path: Path) -> None:
    bad = write_config(
        tmp_path,
        "http://127.0.0.1:9/x",
        extra="""
        [routes.other]
        datasets = ["churn"]
        targets = ["api", "crm_inbx"]
        """,
    )
    text = bad.read_text().replace(FAST_RETRY, "{ attempts = 0 }")
    bad.write_text(text)

    code, out, err = await sender("config", "check", "-c", str(bad))

    assert code == 2
    assert out == ""
    assert "config error: destinations.api.retry.attempts: must be >= 1" in err
    assert "config error: routes.other.targets[1]: unknown destination 'crm_inbx'" in err


async def test_config_check_exits_0_on_a_good_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/x")

    code, out, err = await sender("config", "check", "-c", str(config))

    assert code == 0, err
    assert f"{config}: ok" in out and "1 routes" in out


async def test_config_comes_from_sender_config_then_the_working_folder(tmp_path: Path) -> None:
    write_config(tmp_path, "http://127.0.0.1:9/x")

    code, out, _ = await sender("config", "check", cwd=tmp_path)

    assert code == 0 and "ok" in out


async def test_status_lists_batches_in_80_columns_and_as_json(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_config(tmp_path, receiver.url + "/scores")
    receiver.fail_where(lambda request: request.headers.get("X-Sender-Chunk") == "1")
    async with App(load_config(config)) as app:  # in-process: only status is under test
        for i in range(3):
            batch = write_batch(tmp_path / f"batch-{i}", 800, start=i * 1000)
            batch_id = f"churn-2026-11-2{i}-with-a-rather-long-batch-id"
            message = TriggerMessage(batch_id=batch_id, dataset="churn", uri=str(batch))
            await app.engine.run_batch(message)

    code, out, _ = await sender("status", "-c", str(config))

    assert code == 0
    assert fits_80_columns(out), out
    header = out.splitlines()[0].split()
    assert header[:3] == ["batch", "dataset", "state"] and "prim+fb" in header
    assert out.count("complete") == 3
    assert "1+0" in out  # one chunk by the primary, none by a fallback (one dead-lettered)

    code, out, _ = await sender("status", "--json", "--state", "complete", "-c", str(config))

    assert code == 0
    batches = orjson.loads(out)["batches"]
    assert len(batches) == 3
    first = batches[0]
    assert first["batch_id"].startswith("churn-2026-11-22")  # most recent first
    assert first["records"] == {
        "read": 800,
        "delivered": 400,
        "dead_lettered": 400,
        "rejected": 0,
        "unchanged": 0,
        "chunks": 2,
        "tombstones": 0,
        "tombstones_dead_lettered": 0,
    }
    assert first["delivered_by"] == {"primary": 1, "fallback": 0}
    assert first["targets"] == {"api": 1, "dead": 1}

    code, out, _ = await sender("status", "--dataset", "other", "-c", str(config))
    assert code == 0 and "no batches match" in out
    code, _, err = await sender("status", "--state", "sideways", "-c", str(config))
    assert code == 2 and "unknown state 'sideways'" in err
    code, _, err = await sender("status", "--since", "yesterday", "-c", str(config))
    assert code == 2 and "not a duration" in err
    code, _, err = await sender("status", "no-such-batch", "-c", str(config))
    assert code == 1 and "no batch 'no-such-batch'" in err


async def test_trigger_drops_a_message_in_the_spool_queue(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/x")

    code, out, _ = await sender(
        "trigger", "/data/churn/2026-11-24", "--dataset", "churn", "--batch-id", "churn-1124",
        "--expected-records", "20000", "-c", str(config),
    )  # fmt: skip

    assert code == 0
    assert "published batch churn-1124 (churn) on the spool trigger" in out
    (message,) = (tmp_path / "queue").glob("*.json")
    assert orjson.loads(message.read_bytes()) == {
        "batch_id": "churn-1124",
        "dataset": "churn",
        "uri": "/data/churn/2026-11-24",
        "format": None,
        "expected_records": 20000,
        "routes": None,
        "full": False,
        "rerun": False,
    }
    code, _, err = await sender(
        "trigger", "/data/x", "--dataset", "nobody-routes-this", "-c", str(config)
    )
    assert code == 2 and "no route takes dataset 'nobody-routes-this'" in err


async def test_dead_letters_purge_needs_a_batch(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/x")

    code, _, err = await sender("dead-letters", "--purge", "-c", str(config))

    assert code == 2 and "--purge: name the batch with --batch ID" in err


async def test_burst_with_a_trigger_that_cannot_count_its_queue_is_a_config_error(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/x")
    text = config.read_text().replace('type = "spool"\npath = "queue"', 'type = "http"')
    config.write_text(text)

    code, _, err = await sender("run", "--burst", "-c", str(config))

    assert code == 2
    assert "config error: trigger.type: a http trigger cannot tell when its queue" in err
    assert "--burst" in err


async def test_purge_through_a_dead_letter_store_that_cannot_purge_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a third party's store that keeps dead letters but cannot delete them
    monkeypatch.setenv("PYTHONPATH", str(write_plugin(tmp_path / "site-packages")))
    batch = write_batch(tmp_path / "batch", 400)
    config = write_config(tmp_path, "http://127.0.0.1:9/x")  # nobody listens: dead-lettered
    text = config.read_text().replace('type = "local"\npath = "dead"', 'type = "acme_sink"')
    config.write_text(text)
    code, _, _ = await sender(
        "send", str(batch), "--dataset", "churn", "--batch-id", "b-1", "-q", "-c", str(config)
    )
    assert code == 1

    code, out, err = await sender("dead-letters", "--batch", "b-1", "-c", str(config))
    assert code == 0 and "acme://dead/" in out  # listed, through the store it is in

    code, _, err = await sender("dead-letters", "--batch", "b-1", "--purge", "-c", str(config))
    assert code == 2
    assert (
        "config error: routes.churn.dead_letter: the acme_sink destination 'dead' cannot purge "
        "dead letters" in " ".join(err.split())
    )


@pytest.mark.parametrize("args", [["replay"], ["replay", "b", "--all", "--chunks", "1"]])
async def test_replay_argument_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/x")

    code, _, err = await sender(*args, "-c", str(config))

    assert code == 2 and "usage: sender replay" in err
