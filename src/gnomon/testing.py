"""Helpers for testing feature repos (Gnomon's own tests and benchmarks use them too).

from gnomon.testing import redis_server

with redis_server(tmp_path) as url:          # "redis://127.0.0.1:PORT"
    ...                                      # gnomon.yaml: online: f"{url}/0", stream: f"{url}/1"
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gnomon.errors import ConfigError
from gnomon.extras import require


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_redis_server() -> str | None:
    """The ``redis-server`` executable, or None when it is not installed."""
    return shutil.which("redis-server") or next(
        (path for path in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if Path(path).exists()),
        None,
    )


@contextmanager
def redis_server(directory: str | Path, attempts: int = 3, start_timeout_s: float = 10.0) -> Iterator[str]:
    """A private, persistence-free ``redis-server`` on a free loopback port, stopped on exit;
    yields ``redis://127.0.0.1:PORT`` (append ``/DB``)."""
    redis = require("redis", "redis", "gnomon.testing.redis_server")
    server = find_redis_server()
    if server is None:
        raise ConfigError("redis-server is not installed; on Debian/Ubuntu: apt-get install -y redis-server")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    last_output = b""
    for _attempt in range(attempts):  # another process may take the probed port first
        port = free_port()
        process = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + start_timeout_s
        started = False
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                started = True
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()
        if started:
            break
        if process.poll() is None:
            process.kill()
        last_output = process.communicate()[0]
    else:
        raise RuntimeError(f"redis-server did not start: {last_output.decode(errors='replace')[-2000:]}")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
