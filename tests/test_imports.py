"""Importing is free of effects: a library user's process is not ours (STYLE.md #25).

Every module of ``sender`` and ``sender_adapters`` is imported in a fresh interpreter, which
reports what changed: environment variables and signal handlers must not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = r"""
import json, os, pkgutil, signal, importlib

def handlers():
    return {s.name: repr(signal.getsignal(s)) for s in signal.valid_signals()
            if isinstance(s, signal.Signals)}

env, sigs = dict(os.environ), handlers()
imported = []
for package in ("sender", "sender_adapters"):
    root = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
after, now = dict(os.environ), handlers()
print(json.dumps({
    "imported": imported,
    "env": {k: [env.get(k), after.get(k)] for k in {*env, *after} if env.get(k) != after.get(k)},
    "signals": {k: [v, now[k]] for k, v in sigs.items() if now[k] != v},
}))
"""


def _import_everything() -> dict[str, object]:
    # what a module would set by default must not be set already, or its change is unseen
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARROW_", "PROMETHEUS_"))}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return report


def test_importing_every_module_changes_no_environment_variable_and_no_signal_handler() -> None:
    report = _import_everything()

    assert {"sender.cli", "sender.readers", "sender.daemon", "sender_adapters.local"} <= set(
        report["imported"]  # type: ignore[arg-type]
    )
    assert report["env"] == {}
    assert report["signals"] == {}
