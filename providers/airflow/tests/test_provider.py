"""The provider as Airflow sees it: its entry point, its connection type, and how a
connection names the control server."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from airflow.sdk import Connection
from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime
from conftest import TOKEN, Daemon

import integration_sender_airflow
from integration_sender_airflow.errors import IntegrationSenderError
from integration_sender_airflow.hooks import IntegrationSenderHook, control_server


def test_airflow_finds_the_provider_and_its_connection_type() -> None:
    (entry,) = [
        e
        for e in entry_points(group="apache_airflow_provider")
        if e.value.startswith("integration_sender_airflow")
    ]
    assert entry.load() is integration_sender_airflow.get_provider_info

    providers = ProvidersManagerTaskRuntime()
    hook = providers.hooks["integration_sender"]
    assert hook is not None
    assert hook.hook_class_name == "integration_sender_airflow.hooks.IntegrationSenderHook"
    assert hook.connection_id_attribute_name == "sender_conn_id"
    assert "airflow-provider-integration-sender" in providers.providers


def connection(**fields: object) -> Connection:
    return Connection(conn_id="sender", conn_type="integration_sender", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"host": "sender.internal", "port": 8080}, "http://sender.internal:8080"),
        ({"host": "sender.internal", "schema": "https"}, "https://sender.internal"),
        ({"host": "https://sender.example:8443"}, "https://sender.example:8443"),
        ({"host": "sender.internal:8080"}, "http://sender.internal:8080"),
        ({"host": "::1", "port": 8080}, "http://[::1]:8080"),
        ({"host": "[::1]:8080"}, "http://[::1]:8080"),
    ],
)
def test_a_connection_names_the_control_server(fields: dict[str, object], url: str) -> None:
    assert control_server(connection(**fields)).base_url == url


def test_the_uri_form_of_the_connection_works_too() -> None:
    conn = Connection.from_uri(
        f"integration-sender://:{TOKEN}@sender.internal:8080/https", conn_id="sender"
    )

    server = control_server(conn)

    assert (conn.conn_type, server.base_url) == (
        "integration_sender",
        "https://sender.internal:8080",
    )
    assert server.headers()["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in repr(server)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"port": 8080}, "no host"),
        ({"host": "sender.internal", "schema": "ftp"}, "'ftp' is not http or https"),
    ],
)
def test_a_connection_that_cannot_work_says_why(fields: dict[str, object], error: str) -> None:
    with pytest.raises(IntegrationSenderError, match=f"connection 'sender': .*{error}"):
        control_server(connection(**fields))


def test_the_connection_test_button_checks_the_token(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, message = IntegrationSenderHook().test_connection()
    assert ok, message

    monkeypatch.setenv("AIRFLOW_CONN_INTEGRATION_SENDER_DEFAULT", daemon.connection("wrong"))
    ok, message = IntegrationSenderHook().test_connection()
    assert not ok
    assert "HTTP 401" in message


def test_the_package_exports_the_four_classes_without_importing_airflow_first() -> None:
    code = (
        "import sys, integration_sender_airflow as p\n"
        "assert not any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules)\n"
        "from integration_sender_airflow import SendBatchOperator, BatchSensor, "
        "BatchCompleteTrigger, IntegrationSenderHook\n"
        "from integration_sender_airflow.operators import SendBatchOperator as S\n"
        "assert S is SendBatchOperator\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
