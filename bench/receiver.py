"""The benchmark's receiver on 127.0.0.1: it reads every body, and logs what it got.

nginx with the echo module (``echo_read_request_body``) when it is installed: one worker,
its own config, pid file and temp paths under a scratch folder, in the foreground, never the
system service. Two ports: one answers 200 to everything, the other 503 to a random 20% of
requests (``split_clients`` on ``$request_id``), after reading their body like the others, so
the bytes a retry costs are counted.

Without nginx, the same two ports are served by a multi-process aiohttp receiver
(``python -m bench.receiver``): ``SO_REUSEPORT`` workers that stream each body and count it
(``client_max_size=0``, ``auto_decompress=False``: no limit, no decoding).

Either way every request is one line ``<status> <request bytes>`` in ``access.log``: the
harness reads the bytes on the wire per scenario from it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["Receiver", "wire_bytes"]

_ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")

_NGINX_CONF = """\
load_module {module};
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    log_format wire '$status $request_length';
    access_log {root}/access.log wire;
    client_max_body_size 0;
    # compressed chunks are far below this: bodies are read into memory, not temp files
    client_body_buffer_size 4m;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    split_clients "${{request_id}}" $fail {{
        20% 1;
        * 0;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            echo_read_request_body;
            echo ok;
        }}
    }}
    server {{
        listen 127.0.0.1:{fault_port};
        location / {{
            if ($fail) {{
                rewrite ^ /fail last;
            }}
            echo_read_request_body;
            echo ok;
        }}
        location = /fail {{
            internal;
            # the body is read (and logged) like any other before the 503
            echo_read_request_body;
            echo_status 503;
            echo busy;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the receiver exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the receiver did not listen on port {port} within {timeout:g}s")


def nginx_available() -> bool:
    return shutil.which("nginx") is not None and _ECHO_MODULE.exists()


class Receiver:
    """Start with ``start()``; ``url`` answers 200, ``fault_url`` fails 20% with 503."""

    def __init__(self, root: Path, *, prefer_nginx: bool = True, workers: int = 2) -> None:
        self.root = root
        self.kind = "nginx" if prefer_nginx and nginx_available() else "aiohttp"
        self.workers = workers
        self.port = _free_port()
        self.fault_port = _free_port()
        self.log = root / "access.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    @property
    def fault_url(self) -> str:
        return f"http://127.0.0.1:{self.fault_port}/ingest"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> Receiver:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log.write_bytes(b"")
        if self.kind == "nginx":
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (self.root / sub).mkdir(exist_ok=True)
            conf = self.root / "nginx.conf"
            conf.write_text(
                _NGINX_CONF.format(
                    module=_ECHO_MODULE, root=self.root, port=self.port, fault_port=self.fault_port
                )
            )
            command = ["nginx", "-p", str(self.root), "-c", str(conf)]
        else:
            command = [
                sys.executable,
                "-m",
                "bench.receiver",
                "--port",
                str(self.port),
                "--fault-port",
                str(self.fault_port),
                "--log",
                str(self.log),
                "--workers",
                str(self.workers),
            ]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "receiver.stderr", "wb"),  # noqa: SIM115
            start_new_session=True,  # Ctrl-C in the terminal reaches the harness only
        )
        _wait_for_port(self.port, self._process)
        _wait_for_port(self.fault_port, self._process)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # nginx: SIGQUIT is a graceful stop; the aiohttp master forwards SIGTERM
        process.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_offset(self) -> int:
        return self.log.stat().st_size

    def since(self, offset: int) -> tuple[int, int, int]:
        """Requests, requests answered 2xx, and request bytes logged after ``offset``."""
        return wire_bytes(self.log, offset)


def wire_bytes(log: Path, offset: int) -> tuple[int, int, int]:
    requests = ok = total = 0
    with open(log, "rb") as file:
        file.seek(offset)
        for line in file:
            status, _, size = line.partition(b" ")
            requests += 1
            ok += status.startswith(b"2")
            total += int(size)
    return requests, ok, total


# -- the aiohttp fallback ----------------------------------------------------------------------


def _serve_worker(port: int, fault_port: int, log: str) -> None:
    from aiohttp import web

    rng = random.Random(os.getpid())
    out = open(log, "ab", buffering=0)  # noqa: SIM115  # one write per request, like nginx

    def handler(fail_share: float):  # type: ignore[no-untyped-def]
        async def handle(request: web.Request) -> web.Response:
            size = 0
            async for piece in request.content.iter_any():
                size += len(piece)
            head = sum(len(k) + len(v) + 4 for k, v in request.raw_headers) + 40
            status = 503 if fail_share and rng.random() < fail_share else 200
            out.write(f"{status} {head + size}\n".encode())
            return web.Response(status=status, text="ok\n")

        return handle

    async def main() -> None:
        runners = []
        for p, share in ((port, 0.0), (fault_port, 0.2)):
            app = web.Application(client_max_size=0)
            app.router.add_route("*", "/{tail:.*}", handler(share))
            runner = web.AppRunner(app, auto_decompress=False, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", p, reuse_port=True).start()
            runners.append(runner)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for runner in runners:
            await runner.cleanup()

    asyncio.run(main())


def _main() -> None:
    parser = argparse.ArgumentParser(description="multi-process aiohttp benchmark receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fault-port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_serve_worker, args=(args.port, args.fault_port, args.log))
        for _ in range(args.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    _main()
