"""Scenario 6, the baseline: what a team writes by hand without the sender.

Read the whole batch into memory, then POST it 5,000 records at a time, gzip-compressed
(``gzip.compress``'s default level, as such scripts call it), one request at a time with
``requests``, retried by ``tenacity``. This is the script the sender replaces; the harness
runs it in its own process so its peak memory is its own.

``python -m bench.naive URL FILE...`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

__all__ = ["run"]

BATCH = 5000


class _Retryable(Exception):
    pass


@retry(
    retry=retry_if_exception_type((_Retryable, requests.ConnectionError, requests.Timeout)),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.5, max=30),
    reraise=True,
)
def _post(session: requests.Session, url: str, body: bytes) -> None:
    response = session.post(
        url,
        data=body,
        headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
        timeout=30,
    )
    if response.status_code >= 500 or response.status_code == 429:
        raise _Retryable(response.status_code)
    response.raise_for_status()


def run(url: str, files: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    lines: list[bytes] = []
    for name in files:
        with open(name, "rb") as file:
            lines.extend(file.read().splitlines())
    read_bytes = sum(len(line) + 1 for line in lines)
    wire = requests_sent = 0
    with requests.Session() as session:
        for start in range(0, len(lines), BATCH):
            body = gzip.compress(b"\n".join(lines[start : start + BATCH]) + b"\n")
            _post(session, url, body)
            wire += len(body)
            requests_sent += 1
    return {
        "bytes": read_bytes,
        "records": len(lines),
        "requests": requests_sent,
        "wire_body": wire,
        "elapsed_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    print(json.dumps(run(args.url, args.files)))


if __name__ == "__main__":
    main()
