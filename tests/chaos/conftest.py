"""Real worker processes (celery, solo pool) against the session's Redis, S3 and test database,
with short leases so that losses are noticed in seconds."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]

FAST_QUEUE = {
    "JOB_LEASE_SECONDS": "4",
    "JOB_HEARTBEAT_SECONDS": "1",
    "REAPER_INTERVAL_SECONDS": "1",
    "JOB_QUEUE_RESEND_SECONDS": "6",
    "CHECKPOINT_EVERY_STEPS": "50",
    "CHECKPOINT_EVERY_SECONDS": "0",
    "TRAIN_THREADS": "1",
    "PUBLISH_RETRY_SECONDS": "120",
}


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


class Workers:
    """Starts and kills worker processes; every one is gone when the test ends."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp, self.env, self.procs = tmp, env, []  # type: ignore[var-annotated]

    def start(self, queue: str = "train", *, beat: bool = False, **overrides: str) -> subprocess.Popen:
        name = f"{queue}{len(self.procs)}"
        argv = [sys.executable, "-m", "celery", "-A", "api", "worker", "--pool=solo", "-Q", queue,
                "-n", f"{name}@%h", "--loglevel=INFO", "--without-mingle", "--without-gossip"]
        if beat:
            argv += ["-B", "-s", str(self.tmp / f"beat-{name}")]
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **overrides}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def reaper(self, **overrides: str) -> subprocess.Popen:
        return self.start("default", beat=True, **overrides)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.tmp.glob("*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers(transactional_db: None, bucket: None, tmp_path: Path) -> Iterator[Workers]:
    env = {**os.environ, **FAST_QUEUE, "DATABASE_URL": _database_url()}
    pool = Workers(tmp_path, env)
    yield pool
    pool.stop_all()


def kill_job_worker(job: Any) -> None:
    """kill -9 the worker process holding the job (its `worker` field is host:pid)."""
    os.kill(int(job.worker.rsplit(":", 1)[1]), signal.SIGKILL)
