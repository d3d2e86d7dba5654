"""The example configs in config/ are documentation users copy: each must validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from sender.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def test_aws_example_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TOKEN", "example-token")
    monkeypatch.setenv("SENDER_CONTROL_TOKEN", "example-control-token")

    config = load_config(CONFIG_DIR / "aws.toml")

    assert config.trigger.type == "sqs"
    assert config.source_for("s3://acme-lake/churn/").type == "s3"
    route = config.routes["churn_to_crm"]
    types = {name: config.destinations[name].type for name in [*route.targets, route.dead_letter]}
    assert types == {"crm_api": "http", "crm_inbox": "s3", "dead": "s3"}
    assert config.destinations["dead"].options.manifest is False


def test_local_example_validates_and_keeps_its_state_beside_the_repo() -> None:
    config = load_config(CONFIG_DIR / "local.toml")

    assert config.trigger.type == "spool"
    assert Path(config.daemon.ledger) == CONFIG_DIR.parent / "var" / "demo" / "ledger.db"
    assert config.routes["churn_to_scores"].targets == ["scores_api", "scores_inbox"]
