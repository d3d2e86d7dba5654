"""Configuration: the reference file validates (TOML and YAML), interpolation, key-path errors,
relative paths, the implicit dead-letter store, and secrets kept out of repr and logs."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from sender.config import AppConfig, TriggerOptions, default_config_path, load_config, mask_url
from sender.errors import ConfigError
from sender.log import configure_logging, get_logger, mask
from sender.units import Rate
from tests.plugins import acme_plugin  # noqa: F401 (a fixture)

# DESIGN.md's reference, with only the adapter types this repository registers: the bucket
# fallback is a local folder and the source section is a local one.
REFERENCE_TOML = """
[daemon]
ledger = "var/ledger.db"
listen = "127.0.0.1:8080"
max_batches = 2
shutdown_grace = "30s"

[trigger]
type = "spool"
path = "var/queue"

[sources.lake]
type = "local"
require_success = true

[destinations.crm_api]
type = "http"
url = "https://crm.internal/api/v2/scores"
format = "ndjson"
compression = "zstd"
concurrency = 8
rate_limit = "20/s"
timeout = "30s"
headers = { Authorization = "Bearer ${CRM_TOKEN}" }
signing_secret = "${file:@SIGNING_FILE@}"
retry = { attempts = 6, initial = "500ms", max = "1m", budget = "10m" }
circuit = { failures = 5, reset = "1m" }

[destinations.crm_inbox]
type = "local"
path = "var/inbox"
prefix = "scores/{dataset}/{batch_id}/"
format = "ndjson"
compression = "gzip"

[destinations.dead]
type = "local"
path = "var/dead-letter"

[routes.churn_to_crm]
datasets = ["churn"]
fields = { customer_id = "id", churn_score = "score", model = "model" }
chunk = { records = 5000, bytes = "4MiB" }
targets = ["crm_api", "crm_inbox"]
dead_letter = "dead"
on_bad_record = "dead_letter"
"""

REFERENCE_YAML = """
daemon:
  ledger: var/ledger.db
  listen: "127.0.0.1:8080"
  max_batches: 2
  shutdown_grace: 30s
trigger:
  type: spool
  path: var/queue
sources:
  lake:
    type: local
    require_success: true
destinations:
  crm_api:
    type: http
    url: https://crm.internal/api/v2/scores
    format: ndjson
    compression: zstd
    concurrency: 8
    rate_limit: 20/s
    timeout: 30s
    headers:
      Authorization: "Bearer ${CRM_TOKEN}"
    signing_secret: "${file:@SIGNING_FILE@}"
    retry: {attempts: 6, initial: 500ms, max: 1m, budget: 10m}
    circuit: {failures: 5, reset: 1m}
  crm_inbox:
    type: local
    path: var/inbox
    prefix: "scores/{dataset}/{batch_id}/"
    format: ndjson
    compression: gzip
  dead:
    type: local
    path: var/dead-letter
routes:
  churn_to_crm:
    datasets: [churn]
    fields: {customer_id: id, churn_score: score, model: model}
    chunk: {records: 5000, bytes: 4MiB}
    targets: [crm_api, crm_inbox]
    dead_letter: dead
    on_bad_record: dead_letter
"""

# the smallest valid file: one destination, one route
MINIMAL = """
[destinations.api]
type = "http"
url = "http://127.0.0.1:9/in"

[routes.r]
datasets = ["d"]
targets = ["api"]
"""


@dataclass
class Secrets:
    token: str
    signing: str
    signing_file: Path


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The config folder; the working directory is elsewhere, so relative paths must resolve
    against the config file and not the process's cwd."""
    folder = tmp_path / "etc"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder


@pytest.fixture
def secrets(etc: Path, monkeypatch: pytest.MonkeyPatch) -> Secrets:
    # unique values: the log masker is process-wide, short or common ones would mask others
    token = f"tok-{uuid.uuid4().hex}"
    signing = f"whsec_{uuid.uuid4().hex}"
    signing_file = etc / "secrets" / "crm_signing"
    signing_file.parent.mkdir()
    signing_file.write_text(signing + "\n")  # as Kubernetes mounts it: trailing newline
    monkeypatch.setenv("CRM_TOKEN", token)
    return Secrets(token, signing, signing_file)


def write(folder: Path, text: str, name: str = "sender.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(folder: Path, text: str, name: str = "sender.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(folder, text, name))
    return info.value.problems


def reference(secrets: Secrets, template: str = REFERENCE_TOML) -> str:
    return template.replace("@SIGNING_FILE@", str(secrets.signing_file))


# -- the reference file -----------------------------------------------------------------------


def test_reference_config_validates_with_every_value_read(etc: Path, secrets: Secrets) -> None:
    config = load_config(write(etc, reference(secrets)))

    assert config.path == etc / "sender.toml"
    assert config.daemon.ledger == str(etc / "var" / "ledger.db")
    assert (config.daemon.host, config.daemon.port) == ("127.0.0.1", 8080)
    assert config.daemon.max_batches == 2
    assert config.daemon.shutdown_grace_s == 30.0
    assert config.trigger.type == "spool"
    assert config.trigger.options.path == str(etc / "var" / "queue")
    assert config.sources["lake"].type == "local"

    api = config.destinations["crm_api"].options
    assert api.url == "https://crm.internal/api/v2/scores"
    assert (api.format, api.compression, api.concurrency) == ("ndjson", "zstd", 8)
    assert api.rate_limit == Rate(20, 1)
    assert api.timeout_s == 30.0
    assert api.headers["Authorization"].get_secret_value() == f"Bearer {secrets.token}"
    assert api.signing_secret.get_secret_value() == secrets.signing
    assert (api.retry.attempts, api.retry.initial_s, api.retry.max_s, api.retry.budget_s) == (
        6,
        0.5,
        60.0,
        600.0,
    )
    assert (api.circuit.failures, api.circuit.reset_s) == (5, 60.0)

    inbox = config.destinations["crm_inbox"].options
    assert inbox.path == str(etc / "var" / "inbox")
    assert (inbox.prefix, inbox.compression) == ("scores/{dataset}/{batch_id}/", "gzip")
    assert config.destinations["dead"].options.path == str(etc / "var" / "dead-letter")

    route = config.routes["churn_to_crm"]
    assert list(route.fields.items()) == [
        ("customer_id", "id"),
        ("churn_score", "score"),
        ("model", "model"),
    ]
    assert (route.chunk.records, route.chunk.bytes) == (5000, 4 * 1024 * 1024)
    assert route.targets == ["crm_api", "crm_inbox"]
    assert (route.dead_letter, route.on_bad_record) == ("dead", "dead_letter")
    assert config.routes_for("churn") == ["churn_to_crm"]
    assert config.routes_for("other") == []
    assert config.routes_for("churn", ("another_route",)) == []


def test_reference_config_in_yaml_reads_the_same_as_toml(etc: Path, secrets: Secrets) -> None:
    from_toml = load_config(write(etc, reference(secrets)))
    from_yaml = load_config(write(etc, reference(secrets, REFERENCE_YAML), "sender.yaml"))

    assert from_yaml.daemon == from_toml.daemon
    assert from_yaml.trigger.options == from_toml.trigger.options
    assert from_yaml.sources["lake"].options == from_toml.sources["lake"].options
    for name in ("crm_api", "crm_inbox", "dead"):
        assert from_yaml.destinations[name].options == from_toml.destinations[name].options
    assert from_yaml.routes == from_toml.routes


def test_yml_extension_is_read_as_yaml(etc: Path) -> None:
    text = "destinations:\n  api: {type: http, url: 'http://h/'}\n"
    text += "routes:\n  r: {datasets: [d], targets: [api]}\n"
    assert load_config(write(etc, text, "sender.yml")).routes["r"].targets == ["api"]


def test_every_option_but_the_required_ones_has_a_default(etc: Path) -> None:
    config = load_config(write(etc, MINIMAL))
    assert config.trigger.type == "spool"
    assert config.daemon.max_batches >= 1
    assert config.routes["r"].chunk.records >= 1
    assert config.destinations["api"].options.retry.attempts >= 1


def test_config_path_defaults_to_sender_config_then_sender_toml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENDER_CONFIG", "/etc/sender/prod.yaml")
    assert default_config_path() == Path("/etc/sender/prod.yaml")
    monkeypatch.delenv("SENDER_CONFIG")
    assert default_config_path() == Path("sender.toml")


# -- interpolation ----------------------------------------------------------------------------


def test_environment_variable_is_replaced(etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_HOST", "crm.example")
    config = load_config(write(etc, MINIMAL.replace("127.0.0.1:9", "${API_HOST}:8443")))
    assert config.destinations["api"].options.url == "http://crm.example:8443/in"


def test_default_is_used_when_the_variable_is_unset(
    etc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("API_HOST", raising=False)
    text = MINIMAL.replace("127.0.0.1:9", "${API_HOST:-fallback.example}")
    assert load_config(write(etc, text)).destinations["api"].options.url == (
        "http://fallback.example/in"
    )
    monkeypatch.setenv("API_HOST", "set.example")
    assert load_config(write(etc, text)).destinations["api"].options.url == "http://set.example/in"


def test_empty_default_is_allowed(etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("URL_SUFFIX", raising=False)
    config = load_config(write(etc, MINIMAL.replace("/in", "/in${URL_SUFFIX:-}")))
    assert config.destinations["api"].options.url == "http://127.0.0.1:9/in"


def test_missing_environment_variable_is_an_error_naming_the_key_path(
    etc: Path, secrets: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRM_TOKEN")
    problems = problems_of(etc, reference(secrets))
    assert problems == [
        "destinations.crm_api.headers.Authorization: environment variable CRM_TOKEN is not set"
    ]


def test_missing_variable_inside_a_list_names_its_index(
    etc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SECOND_DATASET", raising=False)
    problems = problems_of(etc, MINIMAL.replace('["d"]', '["d", "${SECOND_DATASET}"]'))
    assert problems == ["routes.r.datasets[1]: environment variable SECOND_DATASET is not set"]


def test_file_secret_is_read_without_its_trailing_newline(etc: Path, secrets: Secrets) -> None:
    config = load_config(write(etc, reference(secrets)))
    assert config.destinations["crm_api"].options.signing_secret.get_secret_value() == (
        secrets.signing
    )


def test_file_secret_path_is_relative_to_the_config_file(etc: Path, secrets: Secrets) -> None:
    text = REFERENCE_TOML.replace("@SIGNING_FILE@", "secrets/crm_signing")
    config = load_config(write(etc, text))
    assert config.destinations["crm_api"].options.signing_secret.get_secret_value() == (
        secrets.signing
    )


def test_unreadable_file_secret_is_an_error_naming_the_key_path(
    etc: Path, secrets: Secrets
) -> None:
    secrets.signing_file.unlink()
    problems = problems_of(etc, reference(secrets))
    assert len(problems) == 1
    assert problems[0].startswith("destinations.crm_api.signing_secret: cannot read ")
    assert str(secrets.signing_file) in problems[0]


# -- errors name the key path -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("[extras]\nkey = 1\n", "extras: unknown key"),
        ("[daemon]\nbogus = 1\n", "daemon.bogus: unknown key"),
        ('[trigger]\ntype = "spool"\npth = "q"\n', "trigger.pth: unknown key"),
        ('[sources.disk]\ntype = "local"\nregion = "x"\n', "sources.disk.region: unknown key"),
        (
            '[destinations.x]\ntype = "http"\nurl = "http://h/"\nretyr = 3\n',
            "destinations.x.retyr: unknown key",
        ),
        (
            '[destinations.x]\ntype = "local"\npath = "out"\nretry = { budgett = "1m" }\n',
            "destinations.x.retry.budgett: unknown key",
        ),
        (
            '[routes.r2]\ndatasets = ["d"]\ntargets = ["api"]\ntarget = "api"\n',
            "routes.r2.target: unknown key",
        ),
        (
            '[routes.r2]\ndatasets = ["d"]\ntargets = ["api"]\nchunk = { record = 10 }\n',
            "routes.r2.chunk.record: unknown key",
        ),
    ],
)
def test_unknown_key_anywhere_is_an_error_naming_its_path(
    etc: Path, extra: str, problem: str
) -> None:
    assert problems_of(etc, MINIMAL + extra) == [problem]


def test_retry_attempts_of_zero_reads_must_be_at_least_one(etc: Path, secrets: Secrets) -> None:
    text = reference(secrets).replace("attempts = 6", "attempts = 0")
    assert problems_of(etc, text) == ["destinations.crm_api.retry.attempts: must be >= 1"]


API = '[destinations.x]\ntype = "http"\nurl = "http://h/"\n'
ROUTE = '[routes.r2]\ndatasets = ["d"]\ntargets = ["api"]\n'


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (API + 'timeout = "soon"', "destinations.x.timeout: 'soon' is not a duration"),
        (API + "timeout = -5", "destinations.x.timeout: must not be negative"),
        (API + "timeout = inf", "destinations.x.timeout: must be a finite duration"),
        (API + 'timeout = "0s"', "destinations.x.timeout: must be > 0"),
        (API + "timeout = [30]", "destinations.x.timeout: expected a duration like '30s'"),
        (API + 'rate_limit = "fast"', "destinations.x.rate_limit: 'fast' is not a rate"),
        (API + "rate_limit = 20", "destinations.x.rate_limit: expected a rate like '20/s'"),
        (API + 'format = "xml"', "destinations.x.format: must be one of 'ndjson', 'json' or"),
        (API + 'compression = "br"', "destinations.x.compression: must be one of 'none',"),
        (
            API + 'compression = "gzip"\ncompression_level = 12',
            "destinations.x.compression_level: must be <= 9 for gzip",
        ),
        (API + "compression_level = 20", "destinations.x.compression_level: must be <= 19"),
        (API + "concurrency = 0", "destinations.x.concurrency: must be >= 1 or 'adaptive'"),
        (API + 'retry = { initial = "1 fortnight" }', "destinations.x.retry.initial: '1 fortn"),
        (API + "circuit = { failures = 0 }", "destinations.x.circuit.failures: must be >= 1"),
        (ROUTE + 'chunk = { bytes = "lots" }', "routes.r2.chunk.bytes: 'lots' is not a size"),
        (ROUTE + "chunk = { bytes = 100 }", "routes.r2.chunk.bytes: must be >= 1024"),
        (ROUTE + "chunk = { bytes = 1.5 }", "routes.r2.chunk.bytes: expected a size like '4MiB'"),
        (ROUTE + "chunk = { records = 0 }", "routes.r2.chunk.records: must be >= 1"),
        (ROUTE + 'on_bad_record = "ignore"', "routes.r2.on_bad_record: must be one of 'skip',"),
        (ROUTE + "fields = {}", "routes.r2.fields: must name at least one field"),
        ('[routes.r3]\ndatasets = []\ntargets = ["api"]', "routes.r3.datasets: must not be empty"),
        ('[routes.r3]\ndatasets = ["d"]', "routes.r3.targets: required"),
        ('[daemon]\nlisten = "8080"', "daemon.listen: must be host:port, e.g. '127.0.0.1:8080'"),
        ("[daemon]\nmax_batches = 0", "daemon.max_batches: must be >= 1"),
        ('[daemon]\nlog_level = "loud"', "daemon.log_level: must be one of 'debug',"),
        ('[trigger]\npath = "q"', "trigger.type: required"),
    ],
)
def test_bad_value_is_an_error_naming_its_path_with_a_readable_message(
    etc: Path, extra: str, problem: str
) -> None:
    problems = problems_of(etc, MINIMAL + extra + "\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem), problems


def test_human_units_are_read_into_seconds_bytes_and_rates(etc: Path) -> None:
    text = MINIMAL + textwrap.dedent(
        """
        [destinations.slow]
        type = "http"
        url = "http://h/"
        timeout = "500ms"
        rate_limit = "5000 records/s"
        retry = { initial = "250ms", max = "2m", budget = "1h" }
        compression = "zstd"
        compression_level = 12

        [routes.big]
        datasets = ["d"]
        targets = ["slow"]
        chunk = { records = 100, bytes = "512KiB" }
        """
    )
    config = load_config(write(etc, text))
    slow = config.destinations["slow"].options
    assert slow.timeout_s == 0.5
    assert (slow.rate_limit.per_second, slow.rate_limit.unit) == (5000.0, "records")
    assert (slow.retry.initial_s, slow.retry.max_s, slow.retry.budget_s) == (0.25, 120.0, 3600.0)
    assert slow.compression_level == 12  # zstd goes past gzip's 9
    assert config.routes["big"].chunk.bytes == 512 * 1024


def test_section_that_is_not_a_table_is_an_error(etc: Path) -> None:
    assert problems_of(etc, "trigger = 5\n" + MINIMAL) == ["trigger: must be a table"]
    assert problems_of(etc, "routes = 5\n[destinations.api]\ntype = 'local'\npath = 'x'\n") == [
        "routes: must be a table"
    ]


def test_unknown_destination_type_lists_the_known_ones(etc: Path) -> None:
    problems = problems_of(etc, MINIMAL + '[destinations.q]\ntype = "kafka"\n')
    assert len(problems) == 1
    assert problems[0].startswith("destinations.q.type: unknown destination type 'kafka' (known: ")
    assert "http" in problems[0]
    assert "local" in problems[0]


def test_unknown_trigger_type_lists_the_known_ones(etc: Path) -> None:
    problems = problems_of(etc, MINIMAL + '[trigger]\ntype = "carrier-pigeon"\n')
    assert len(problems) == 1
    assert problems[0].startswith("trigger.type: unknown trigger type 'carrier-pigeon' (known: ")
    assert "spool" in problems[0]


def test_route_to_an_unknown_destination_is_an_error(etc: Path) -> None:
    text = (
        MINIMAL + '[routes.r2]\ndatasets = ["d"]\ntargets = ["api", "nope"]\ndead_letter = "gone"'
    )
    assert problems_of(etc, text) == [
        "routes.r2.targets[1]: unknown destination 'nope'",
        "routes.r2.dead_letter: unknown destination 'gone'",
    ]


def test_dead_letter_that_is_also_a_target_is_an_error(etc: Path) -> None:
    text = MINIMAL.replace('targets = ["api"]', 'targets = ["api"]\ndead_letter = "api"')
    assert problems_of(etc, text) == ["routes.r.dead_letter: must not also be one of the targets"]


def test_route_with_another_error_still_has_its_destinations_checked(etc: Path) -> None:
    text = MINIMAL + '[routes.r2]\ndatasets = []\ntargets = ["nope"]\n'
    assert sorted(problems_of(etc, text)) == [
        "routes.r2.datasets: must not be empty",
        "routes.r2.targets[0]: unknown destination 'nope'",
    ]


def test_every_problem_is_reported_at_once(etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    text = """
    bogus = 1
    [daemon]
    max_batches = 0
    [destinations.api]
    type = "http"
    url = "http://h/${NOT_SET_ANYWHERE}"
    retry = { attempts = 0 }
    [destinations.q]
    type = "kafka"
    [routes.r]
    datasets = ["d"]
    targets = ["api", "missing"]
    chunk = { bytes = "huge" }
    """
    with pytest.raises(ConfigError) as info:
        load_config(write(etc, text))
    expected = {
        "bogus: unknown key",
        "daemon.max_batches: must be >= 1",
        "destinations.api.url: environment variable NOT_SET_ANYWHERE is not set",
        "destinations.api.retry.attempts: must be >= 1",
        "routes.r.targets[1]: unknown destination 'missing'",
    }
    assert expected <= set(info.value.problems)
    assert any(
        p.startswith("destinations.q.type: unknown destination type") for p in info.value.problems
    )
    assert any(
        p.startswith("routes.r.chunk.bytes: 'huge' is not a size") for p in info.value.problems
    )
    assert len(info.value.problems) == 7
    for problem in info.value.problems:  # str() is what `sender config check` prints
        assert problem in str(info.value)


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_invalid_toml_is_a_config_error_naming_the_file(etc: Path) -> None:
    path = write(etc, "[daemon\nledger = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_yaml_whose_top_level_is_not_a_table_is_a_config_error(etc: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="top level must be a table"):
        load_config(write(etc, text, "sender.yaml"))


# -- paths and the implicit dead-letter store -------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(etc: Path) -> None:
    text = MINIMAL + textwrap.dedent(
        """
        [daemon]
        ledger = "state/ledger.db"
        [trigger]
        type = "spool"
        path = "queue"
        [destinations.out]
        type = "local"
        path = "../out"
        [destinations.abs]
        type = "local"
        path = "/srv/abs"
        """
    )
    config = load_config(write(etc, text))
    assert config.daemon.ledger == str(etc / "state" / "ledger.db")
    assert config.trigger.options.path == str(etc / "queue")
    assert Path(config.destinations["out"].options.path) == etc.parent / "out"  # normalised
    assert config.destinations["abs"].options.path == "/srv/abs"


def test_default_ledger_lives_next_to_the_config_file(etc: Path) -> None:
    assert load_config(write(etc, MINIMAL)).daemon.ledger == str(etc / "var" / "ledger.db")


def test_ledger_url_is_left_alone(etc: Path) -> None:
    url = "postgresql://sender@db.internal:5432/sender"
    config = load_config(write(etc, MINIMAL + f'[daemon]\nledger = "{url}"\n'))
    assert config.daemon.ledger == url


def test_config_file_named_by_a_relative_path_resolves_too(
    etc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(etc, MINIMAL)
    monkeypatch.chdir(etc.parent)
    config = load_config(Path("etc") / "sender.toml")
    assert config.daemon.ledger == str(etc / "var" / "ledger.db")


def test_route_without_dead_letter_gets_the_implicit_local_store(etc: Path) -> None:
    config = load_config(write(etc, MINIMAL))
    implicit = config.destinations[config.dead_letter_default]
    assert implicit.type == "local"
    assert implicit.options.path == str(etc / "var" / "dead-letter")
    assert config.routes["r"].dead_letter is None


# -- what a section asks of its adapter's class ---------------------------------------------


@pytest.mark.usefixtures("acme_plugin")
def test_a_format_the_destination_does_not_declare_is_an_error_naming_the_key_path(
    etc: Path,
) -> None:
    text = MINIMAL + '[destinations.acme]\ntype = "acme_sink"\nformat = "csv"\n'
    assert problems_of(etc, text) == [
        "destinations.acme.format: a acme_sink destination does not take 'csv' (it takes ndjson)"
    ]


@pytest.mark.usefixtures("acme_plugin")
def test_a_compression_the_destination_does_not_declare_is_an_error_naming_the_key_path(
    etc: Path,
) -> None:
    text = MINIMAL + '[destinations.acme]\ntype = "acme_sink"\ncompression = "zstd"\n'
    assert problems_of(etc, text) == [
        "destinations.acme.compression: a acme_sink destination does not take 'zstd' "
        "(it takes gzip, none)"
    ]


@pytest.mark.usefixtures("acme_plugin")
def test_a_format_and_compression_the_destination_declares_are_taken(etc: Path) -> None:
    text = MINIMAL + '[destinations.acme]\ntype = "acme_sink"\ncompression = "none"\n'
    assert load_config(write(etc, text)).destinations["acme"].options.compression == "none"


@pytest.mark.parametrize(
    ("uri", "type_"),
    [
        ("/data/batch", "local"),
        ("file:///data/batch", "local"),
        ("s3://b/k/", "s3"),
        ("gs://b/k/", "gcs"),
        ("acme://lake/batch", "acme"),
    ],
)
@pytest.mark.usefixtures("acme_plugin")
def test_a_batch_uri_goes_to_the_source_that_serves_its_scheme(
    etc: Path, uri: str, type_: str
) -> None:
    assert load_config(write(etc, MINIMAL)).source_for(uri).type == type_


def test_a_configured_source_serves_its_scheme_with_its_options(etc: Path) -> None:
    text = MINIMAL + '[sources.lake]\ntype = "local"\nrequire_success = false\n'
    section = load_config(write(etc, text)).source_for("file:///data/batch")
    assert (section.name, section.options.require_success) == ("lake", False)


def test_a_uri_no_source_serves_is_an_error_naming_the_schemes_served(etc: Path) -> None:
    config = load_config(write(etc, MINIMAL))
    with pytest.raises(ConfigError, match=r"no source type takes hdfs:// \(known: .*s3://"):
        config.source_for("hdfs://cluster/batch")


def test_no_implicit_store_when_every_route_has_its_own(etc: Path, secrets: Secrets) -> None:
    config = load_config(write(etc, reference(secrets)))
    assert config.dead_letter_default not in config.destinations


# -- secrets ----------------------------------------------------------------------------------


@pytest.fixture
def secret_config(etc: Path, secrets: Secrets) -> tuple[AppConfig, list[str]]:
    """The reference plus a literal header value and a PostgreSQL password; returns the
    config and every secret value it holds."""
    api_key = f"key-{uuid.uuid4().hex}"
    db_password = f"pw-{uuid.uuid4().hex}"
    text = (
        reference(secrets)
        .replace(
            'headers = { Authorization = "Bearer ${CRM_TOKEN}" }',
            f'headers = {{ Authorization = "Bearer ${{CRM_TOKEN}}", X-Api-Key = "{api_key}" }}',
        )
        .replace(
            'ledger = "var/ledger.db"',
            f'ledger = "postgresql://sender:{db_password}@db.internal:5432/sender"',
        )
    )
    config = load_config(write(etc, text))
    return config, [secrets.token, secrets.signing, api_key, db_password]


def test_secrets_never_appear_in_repr(secret_config: tuple[AppConfig, list[str]]) -> None:
    config, values = secret_config
    shown = [repr(config), str(config), repr(config.daemon)]
    shown += [repr(section) for section in config.destinations.values()]
    for text in shown:
        for value in values:
            assert value not in text
    assert "postgresql://sender:***@db.internal:5432/sender" in repr(config.daemon)


def test_password_in_a_broker_url_is_masked_in_repr() -> None:
    class BrokerOptions(TriggerOptions):
        url: str

    password = f"pw-{uuid.uuid4().hex}"
    options = BrokerOptions.model_validate(
        {"type": "amqp", "url": f"amqp://guest:{password}@127.0.0.1/"}
    )
    assert password not in repr(options)
    assert "amqp://guest:***@127.0.0.1/" in repr(options)
    assert options.url.endswith(f"{password}@127.0.0.1/")  # the code still sees the real one
    assert mask(f"connecting with {password}") == "connecting with ***"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:s3cret@host/", "amqp://guest:***@host/"),
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("https://host/path?q=1", "https://host/path?q=1"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict]]]:
    """Turns JSON logs on (captured) stderr and returns a reader of the lines written since;
    structlog's previous setup is restored afterwards."""
    saved = structlog.get_config()

    def lines() -> list[dict]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    # configured here, in the test's call phase: during fixture setup sys.stderr is not yet
    # the stream capsys reads in the test
    yield lambda: (configure_logging("debug", json=True), lines)[1]
    structlog.configure(**saved)


def test_secrets_are_masked_in_log_lines(
    secret_config: tuple[AppConfig, list[str]], json_logs: Callable[[], list[dict]]
) -> None:
    config, values = secret_config
    token, signing, api_key, _ = values
    read_lines = json_logs()
    log = get_logger("test")
    log.warning(
        "delivery.failed",
        header=f"Bearer {token}",
        ledger=config.daemon.ledger,
        nested={"keys": [api_key], "signing": signing},
    )
    try:
        raise RuntimeError(f"receiver echoed {signing}")
    except RuntimeError:
        log.exception("delivery.crashed")

    lines = read_lines()
    assert [line["event"] for line in lines] == ["delivery.failed", "delivery.crashed"]
    text = json.dumps(lines)
    for value in values:
        assert value not in text
    assert lines[0]["header"] == "***"  # the whole header value is the registered secret
    assert lines[0]["ledger"] == "postgresql://sender:***@db.internal:5432/sender"
    assert lines[0]["nested"] == {"keys": ["***"], "signing": "***"}
    assert "receiver echoed ***" in lines[1]["exception"]
