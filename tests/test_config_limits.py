"""Loading a config is bounded: a YAML alias bomb or an alias inside itself, and a
``${file:...}`` that names something endless, are config errors (``config check`` exits 2
at once, without a traceback), not a hang or a ``MemoryError``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SENDER = str(Path(sys.executable).with_name("sender"))

DESTINATIONS = """
destinations:
  api:
    type: http
    url: "http://127.0.0.1:9/in"
    headers:
      X-Key: "${file:KEY}"
routes:
  r:
    datasets: [d]
    targets: [api]
"""

BOMB = """
bomb:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def config_check(path: Path) -> tuple[int, str]:
    done = subprocess.run(
        [SENDER, "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def write(tmp_path: Path, text: str, key: str = "key.txt") -> Path:
    path = tmp_path / "sender.yaml"
    path.write_text(text.replace("KEY", key))
    return path


def test_a_plain_yaml_config_with_a_file_secret_checks(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("s3cr3t-key\n")
    code, output = config_check(write(tmp_path, DESTINATIONS))
    assert code == 0, output


def test_a_yaml_alias_bomb_is_a_config_error_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("s3cr3t-key\n")
    code, output = config_check(write(tmp_path, DESTINATIONS + BOMB))
    assert code == 2
    assert "more than 100000 values once YAML aliases are expanded" in output
    assert "Traceback" not in output


def test_a_yaml_alias_inside_itself_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("s3cr3t-key\n")
    code, output = config_check(write(tmp_path, DESTINATIONS + "loop: &loop [1, *loop]\n"))
    assert code == 2 and "Traceback" not in output


def test_a_file_secret_of_dev_zero_is_a_config_error(tmp_path: Path) -> None:
    code, output = config_check(write(tmp_path, DESTINATIONS, key="/dev/zero"))
    assert code == 2
    assert "destinations.api.headers.X-Key: /dev/zero is larger than 1024 KiB" in output
    assert "Traceback" not in output and "MemoryError" not in output
