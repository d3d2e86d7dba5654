"""Closed by default: who may use the control server, and which URIs a trigger may name."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from sender.config import load_config, parse_config
from sender.errors import ConfigError
from sender.testing.receiver import Receiver
from tests.brokers import churn_batch, running_daemon, write_daemon_config
from tests.test_trigger_http import HTTP, TOKEN

DAEMON_TOKEN = "daemon-token-for-tests"


def _config(**daemon: Any) -> dict[str, Any]:
    return {
        "daemon": daemon,
        "destinations": {"d": {"type": "local", "path": "/tmp/x"}},
        "routes": {"r": {"datasets": ["churn"], "targets": ["d"]}},
    }


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "10.0.0.5:8080", "[::]:8080"])
def test_listening_beyond_loopback_without_a_token_is_a_config_error(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"daemon: .*reachable beyond this machine: set"):
        parse_config(_config(listen=listen))


def test_listening_beyond_loopback_is_fine_with_a_token_or_an_explicit_anonymous() -> None:
    assert parse_config(_config(listen="0.0.0.0:8080", token="t")).daemon.token is not None
    assert parse_config(_config(listen="0.0.0.0:8080", allow_anonymous=True)).daemon.token is None
    assert parse_config(_config(listen="127.0.0.1:8080")).daemon.token is None


@pytest.mark.parametrize("value", ["", "   ", "${CTL_TOKEN}"])
def test_an_empty_token_is_a_config_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTL_TOKEN", "")
    with pytest.raises(ConfigError, match=r"daemon\.token: is empty"):
        parse_config(_config(token=value))


def test_an_empty_token_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    path = tmp_path / "sender.toml"
    path.write_text(
        f'[daemon]\ntoken = "${{file:{tmp_path / "token"}}}"\n'
        '[destinations.d]\ntype = "local"\npath = "out"\n'
        '[routes.r]\ndatasets = ["churn"]\ntargets = ["d"]\n'
    )
    with pytest.raises(ConfigError, match=r"daemon\.token: is empty"):
        load_config(path)


def test_shipped_examples_that_listen_everywhere_set_a_token() -> None:
    for name in ("aws.toml", "gcp.toml", "onprem.toml"):
        text = (Path(__file__).resolve().parents[1] / "config" / name).read_text()
        if '"0.0.0.0:' in text:
            assert "SENDER_CONTROL_TOKEN" in text, name


async def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response,
    ):
        return response.status, await response.json()


async def _post(
    port: int, body: bytes, headers: dict[str, str] | None = None, query: str = ""
) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/v1/batches{query}", data=body, headers=headers
        ) as response,
    ):
        return response.status


async def _post_json(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/v1/batches", data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


def _with_daemon_token(path: Path) -> Path:
    text = path.read_text().replace("[daemon]\n", f'[daemon]\ntoken = "{DAEMON_TOKEN}"\n', 1)
    path.write_text(text)
    return path


async def test_the_bearer_scheme_is_case_insensitive_and_the_daemon_token_never_in_a_query(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _with_daemon_token(write_daemon_config(tmp_path, receiver=receiver.url, trigger=HTTP))
    body = churn_batch(tmp_path, "b-1").to_json()
    async with running_daemon(config) as daemon, asyncio.timeout(20):
        assert daemon.control is not None
        port = daemon.control.port
        assert port is not None
        for scheme in ("bearer", "BEARER", "Bearer"):
            status, _ = await _get(
                port, "/v1/batches", {"Authorization": f"{scheme} {DAEMON_TOKEN}"}
            )
            assert status == 200, scheme
        assert (await _get(port, "/v1/batches"))[0] == 401
        assert (await _get(port, f"/v1/batches?token={DAEMON_TOKEN}"))[0] == 401
        # the daemon's token in a query string is refused; the trigger's push token is not
        assert await _post(port, body, query=f"?token={DAEMON_TOKEN}") == 401
        assert await _post(port, body, query=f"?token={TOKEN}") == 202


async def test_readyz_tells_what_is_wrong_only_to_the_token_holder(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = _with_daemon_token(write_daemon_config(tmp_path, receiver=receiver.url, trigger=HTTP))
    (tmp_path / "dead").write_text("a file where the dead-letter folder should be")
    async with running_daemon(config) as daemon, asyncio.timeout(20):
        assert daemon.control is not None and daemon.control.port is not None
        port = daemon.control.port
        anonymous = await _get(port, "/readyz")
        holder = await _get(port, "/readyz", {"Authorization": f"Bearer {DAEMON_TOKEN}"})
    assert anonymous == (503, {"status": "not ready"})
    assert holder[0] == 503 and holder[1]["problems"]


@pytest.mark.parametrize(
    ("allow", "uri", "refused"),
    [
        (None, "file:///etc/passwd", True),
        (None, "/etc/passwd", True),
        (None, "{base}/lake/../../../etc/passwd", True),
        (None, "{base}/lake/b-1", False),
        (None, "s3://lake/churn/", True),  # no [sources] section serves s3://
        (["s3://lake/", "{base}/lake/"], "s3://lake/churn/", False),
        (["s3://lake/"], "s3://lakehouse/churn/", True),
        (["{base}/lake/"], "{base}/lake/../secret", True),
        (["{base}/lake/"], "{base}/lake/b-1", False),
    ],
)
def test_remote_triggers_may_name_only_allowed_uris(
    tmp_path: Path, allow: list[str] | None, uri: str, refused: bool
) -> None:
    base = str(tmp_path)
    raw = _config(**({"allow_uris": [a.format(base=base) for a in allow]} if allow else {}))
    path = tmp_path / "sender.toml"
    path.write_text("")
    from sender.config import parse_config as parse

    config = parse(raw, path=path)
    refusal = config.uri_refusal(uri.format(base=base), remote=True)
    assert (refusal is not None) == refused, refusal


def test_local_triggers_and_sender_send_may_name_any_uri_unless_allow_uris_says(
    tmp_path: Path,
) -> None:
    open_config = parse_config(_config(), path=tmp_path / "sender.toml")
    assert open_config.uri_refusal("/etc/passwd", remote=False) is None
    closed = parse_config(_config(allow_uris=["/data/"]), path=tmp_path / "sender.toml")
    assert closed.uri_refusal("/etc/passwd", remote=False) is not None


async def test_a_posted_message_for_a_forbidden_uri_is_rejected_with_the_reason_and_nothing_sent(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_daemon_config(tmp_path, receiver=receiver.url, trigger=HTTP)
    (tmp_path / "secret.csv").write_text("user,password\nroot,hunter2\n")
    bad = orjson.dumps(
        {"batch_id": "steal", "dataset": "churn", "uri": "/etc/passwd", "format": "csv"}
    )
    good = churn_batch(tmp_path, "b-good")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with running_daemon(config) as daemon, asyncio.timeout(20):
        assert daemon.control is not None and daemon.control.port is not None
        status, answer = await _post_json(daemon.control.port, bad, headers)
        assert status == 400 and "/etc/passwd" in answer["error"]
        assert (await _post_json(daemon.control.port, good.to_json(), headers))[0] == 202
        (settled,) = await daemon.wait_settled(1)
    assert (settled.batch_id, settled.verb) == ("b-good", "ack")
    assert all(b"root" not in r.body for r in receiver.requests)
    assert receiver.accepted
