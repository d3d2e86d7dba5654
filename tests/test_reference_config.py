"""The reference configuration in DESIGN.md is a contract: it must load and validate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sender.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _design_reference() -> str:
    design = ROOT.parent / "shared" / "DESIGN.md"
    if not design.is_file():
        pytest.skip("../shared/DESIGN.md is not beside the checkout")
    match = re.search(r"```toml\n(.*?)```", design.read_text(), re.S)
    assert match, "DESIGN.md has no TOML reference block"
    return match.group(1)


def test_config_reference_toml_is_the_design_reference_verbatim() -> None:
    ours = (ROOT / "config" / "reference.toml").read_text()
    assert _design_reference() in ours


def test_the_reference_config_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "crm_signing"
    secret.write_text("whsec_c2lnbmluZy1zZWNyZXQtZm9yLXRlc3Rz\n")
    text = _design_reference().replace("/run/secrets/crm_signing", str(secret))
    path = tmp_path / "sender.toml"
    path.write_text(text)
    monkeypatch.setenv("CRM_TOKEN", "token-from-the-environment")

    config = load_config(path)

    api = config.destinations["crm_api"].options
    assert api.retry.attempts == 6 and api.retry.initial_s == 0.5 and api.retry.budget_s == 600
    assert api.circuit.failures == 5 and api.circuit.reset_s == 60
    assert api.rate_limit is not None and api.rate_limit.per_second == 20
    assert api.headers["Authorization"].get_secret_value() == "Bearer token-from-the-environment"
    assert "token-from-the-environment" not in repr(config)
    assert config.destinations["crm_inbox"].type == "gcs"
    assert config.sources["lake"].type == "s3"
    route = config.routes["churn_to_crm"]
    assert route.targets == ["crm_api", "crm_inbox"] and route.dead_letter == "dead"
    assert route.chunk.bytes == 4 * 1024 * 1024
    assert config.daemon.ledger == str(tmp_path / "var" / "ledger.db")
