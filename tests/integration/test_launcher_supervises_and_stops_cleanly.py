"""`make run`'s launcher on embedded defaults: everything up, a dead worker restarted, Ctrl-C stops all."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from storage.embedded import free_port, port_open
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as response:
            return json.loads(response.read())
    except OSError as exc:
        return {"ok": False, "error": str(exc)}


def _workers(launcher: psutil.Process, name: str) -> list[psutil.Process]:
    found = []
    for child in launcher.children():
        try:
            if any(name in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited, or a zombie not yet reaped by the launcher
            pass
    return found


def test_launcher_runs_everything_restarts_a_dead_worker_and_stops_cleanly(tmp_path: Path) -> None:
    ports = {"WEB_PORT": free_port(), "EMBEDDED_REDIS_PORT": free_port(), "EMBEDDED_S3_PORT": free_port()}
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"}}
    env.update({k: str(v) for k, v in ports.items()}, FOUNDRY_VAR_DIR=str(tmp_path / "var"))
    log = open(tmp_path / "launch.log", "wb")
    proc = subprocess.Popen([sys.executable, "manage.py", "launch"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    launcher = psutil.Process(proc.pid)
    try:
        health = wait_for(lambda: _health(ports["WEB_PORT"]), lambda h: h["ok"], timeout=120)
        assert set(health["checks"]) == {"database", "broker", "storage"}
        assert (tmp_path / "var" / "foundry.sqlite3").exists()
        assert (tmp_path / "var" / "demo" / "sentiment-train.jsonl").exists()
        for conn in psutil.net_connections("tcp"):
            if conn.status == "LISTEN" and conn.laddr.port in ports.values():
                assert conn.laddr.ip == "127.0.0.1", conn

        train_worker = wait_for(lambda: _workers(launcher, "train@"), bool, timeout=30)[0]
        train_worker.kill()
        replacement = wait_for(lambda: [p for p in _workers(launcher, "train@") if p.pid != train_worker.pid],
                               bool, timeout=30)
        assert replacement[0].is_running()
        descendants = launcher.children(recursive=True)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0, (tmp_path / "launch.log").read_text()[-3000:]
    time.sleep(1)
    assert not [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not any(port_open(port) for port in ports.values())
