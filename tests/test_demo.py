"""``sender demo`` as a new user tries it: installed from a wheel, run in an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_demo_config_and_the_status_page(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("integration_sender-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())

    assert {"sender/demo_data/demo.toml", "sender/page/page.js", "sender/page/page.css"} <= names


def test_the_demo_runs_in_an_empty_folder_and_writes_only_under_var_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDER_")}
    run = subprocess.run(
        [sys.executable, "-m", "sender.cli", "demo", "--records", "5000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "demo ok" in run.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["var"]
    demo = tmp_path / "var" / "demo"
    assert {"sender.toml", "ledger.db", "inbox", "dead-letter"} <= {p.name for p in demo.iterdir()}
    assert "page      http://127.0.0.1:" in run.stdout
    assert "sender status -c var/demo/sender.toml churn-2026-11-24" in run.stdout
    status = subprocess.run(
        [sys.executable, "-m", "sender.cli", "status", "-c", "var/demo/sender.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "churn-2026-11-24" in status.stdout and "complete" in status.stdout


def test_the_repository_example_is_the_packaged_demo_config_but_for_its_paths(
    tmp_path: Path,
) -> None:
    from sender.config import load_config
    from sender.demo import demo_config_text

    packaged = tmp_path / "var" / "demo" / "sender.toml"
    packaged.parent.mkdir(parents=True)
    packaged.write_text(demo_config_text())

    def shape(path: Path) -> dict[str, object]:
        config = load_config(path)
        return {
            "routes": {n: r.model_dump() for n, r in config.routes.items()},
            "destinations": {
                n: {k: v for k, v in d.options.model_dump().items() if k != "path"}
                for n, d in config.destinations.items()
            },
            "trigger": config.trigger.type,
        }

    assert shape(REPO / "config" / "local.toml") == shape(packaged)
