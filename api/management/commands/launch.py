"""`make run`: start, supervise and cleanly stop the whole service on one machine.

Starts an embedded redis-server when REDIS_URL is unset and an embedded SeaweedFS when
S3_ENDPOINT_URL is unset, migrates, then runs the ASGI web server (`python -m api.web`, WEB_WORKERS
processes) and the Celery workers (one for training, one for light work such as dataset validation).
A worker that dies is started again. Everything binds to 127.0.0.1 unless WEB_HOST says otherwise."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from api.datasets.demo import demo_write
from storage import embedded, s3


@dataclass
class Child:
    name: str
    argv: list[str]
    restart: bool
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, start_new_session=True)


class Command(BaseCommand):
    help = "Run the whole service (web, workers, embedded Redis and S3 when not configured)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-workers", action="store_true", help="run only the web server")

    def handle(self, *args: Any, no_workers: bool = False, **options: Any) -> None:
        self.services: list[subprocess.Popen] = []
        self.children: list[Child] = []
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._start_services()
            call_command("migrate", interactive=False, verbosity=0)
            s3.bucket_ensure()
            train, _ = demo_write(settings.VAR_DIR / "demo")
            self.stdout.write(f"demo data in {train.parent}")
            self._start_children(no_workers)
            self.stdout.write(f"Adapter Foundry on http://{settings.WEB_HOST}:{settings.WEB_PORT}/ (Ctrl-C stops)")
            self._supervise()
        finally:
            self._stop_all()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _start_services(self) -> None:
        var = settings.VAR_DIR
        if settings.REDIS_EMBEDDED:
            if embedded.port_open(settings.EMBEDDED_REDIS_PORT):
                raise SystemExit(f"port {settings.EMBEDDED_REDIS_PORT} is taken: set REDIS_URL or EMBEDDED_REDIS_PORT")
            self.stdout.write(f"starting embedded Redis on 127.0.0.1:{settings.EMBEDDED_REDIS_PORT}")
            self.services.append(embedded.redis_start(var / "redis", port=settings.EMBEDDED_REDIS_PORT))
        if settings.S3_EMBEDDED:
            if embedded.port_open(settings.EMBEDDED_S3_PORT):
                raise SystemExit(f"port {settings.EMBEDDED_S3_PORT} is taken: set S3_ENDPOINT_URL or EMBEDDED_S3_PORT")
            self.stdout.write(f"starting embedded SeaweedFS (S3) on 127.0.0.1:{settings.EMBEDDED_S3_PORT}")
            self.services.append(
                embedded.seaweedfs_start(var / "seaweedfs", s3_port=settings.EMBEDDED_S3_PORT,
                                         access_key=settings.S3_ACCESS_KEY_ID,
                                         secret_key=settings.S3_SECRET_ACCESS_KEY)
            )

    def _start_children(self, no_workers: bool) -> None:
        python = sys.executable
        self.children.append(Child("web", [python, "-m", "api.web", "--host", settings.WEB_HOST, "--port",
                                           str(settings.WEB_PORT)], restart=True))
        self.children.append(Child("inference", [python, "-m", "workers.inference.server"], restart=True))
        if not no_workers:
            worker = [python, "-m", "celery", "-A", "api", "worker", "--pool=solo", "--loglevel=INFO"]
            self.children.append(Child("worker-train", [*worker, "-Q", "train", "-n", "train@%h"], restart=True))
            # The light worker also runs the periodic scheduler (beat) that reaps expired leases.
            schedule = str(settings.VAR_DIR / "celerybeat-schedule")
            self.children.append(Child("worker-light", [*worker, "-Q", "default", "-n", "light@%h", "-B", "-s",
                                                        schedule], restart=True))
        for child in self.children:
            child.start()

    def _supervise(self) -> None:
        while not self.stopping:
            time.sleep(1)
            for child in self.children:
                assert child.proc is not None
                code = child.proc.poll()
                if code is None or self.stopping:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                if len(child.restarts) > 5:
                    self.stderr.write(f"{child.name} died 5 times in a minute (exit {code}); stopping")
                    self.stopping = True
                    break
                self.stderr.write(f"{child.name} exited with {code}; restarting it")
                child.start()
            for proc in self.services:
                if proc.poll() is not None and not self.stopping:
                    self.stderr.write(f"embedded service (pid {proc.pid}) exited with {proc.returncode}; stopping")
                    self.stopping = True

    def _stop_all(self) -> None:
        for child in reversed(self.children):
            if child.proc and child.proc.poll() is None:
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in reversed(self.children):
            if child.proc:
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(child.proc.pid, signal.SIGKILL)
        for proc in reversed(self.services):
            embedded.stop(proc)
