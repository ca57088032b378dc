"""What each Celery worker can do, reported to Redis: its queues and devices (CPU cores and memory, CUDA
devices with their names and memory), at start and every WORKER_REPORT_SECONDS, with a TTL of three
periods, so a worker that dies drops off the list by itself. api/ops/selectors.py lists the reports.

Also WORKER_QUEUES: the queues a worker consumes when `celery worker` is started without -Q."""

import json
import logging
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown
from django.conf import settings

from api.ops import broker
from api.ops.routing import train_queues
from api.ops.selectors import WORKER_KEY

log = logging.getLogger(__name__)
TTL_PERIODS = 3
_reporter: "Reporter | None" = None


def _memory_bytes() -> int:
    """Physical memory, or the cgroup's limit when it is lower (containers)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def _cuda_devices() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory),
                        "capability": f"{props.major}.{props.minor}"})
    return devices


def devices_report(*, probe_cuda: bool = True) -> dict[str, Any]:
    """{"cpu": {"cores", "usable", "memory_bytes"}, "cuda": [{"index", "name", "memory_bytes", "capability"}],
    "train_device"}. probe_cuda=False skips importing torch (light workers never train)."""
    return {
        "cpu": {"cores": os.cpu_count() or 1, "usable": len(os.sched_getaffinity(0)), "memory_bytes": _memory_bytes()},
        "cuda": _cuda_devices() if probe_cuda else [],
        "train_device": settings.TRAIN_DEVICE,
    }


def worker_report_write(report: dict[str, Any]) -> None:
    report = {**report, "seen_at": datetime.now(UTC).isoformat(timespec="seconds")}
    ttl = settings.WORKER_REPORT_SECONDS * TTL_PERIODS
    broker.client().set(broker.key(WORKER_KEY + report["name"]), json.dumps(report), ex=ttl)


def worker_report_delete(name: str) -> None:
    broker.client().delete(broker.key(WORKER_KEY + name))


def worker_report_build(*, name: str, queues: list[str]) -> dict[str, Any]:
    trains = bool(set(queues) & set(train_queues()))
    return {"name": name, "host": socket.gethostname(), "pid": os.getpid(), "queues": sorted(queues),
            "devices": devices_report(probe_cuda=trains), "started_at": datetime.now(UTC).isoformat(timespec="seconds")}


class Reporter(threading.Thread):
    """Writes the report now and then every WORKER_REPORT_SECONDS until stopped; Redis trouble is logged
    and retried at the next period (the TTL keeps the last report meanwhile)."""

    def __init__(self, report: dict[str, Any]):
        super().__init__(name="worker-capabilities", daemon=True)
        self.report = report
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            try:
                worker_report_write(self.report)
            except Exception:
                log.warning("could not report worker %s to Redis", self.report["name"], exc_info=True)
            if self._stop_event.wait(settings.WORKER_REPORT_SECONDS):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        try:
            worker_report_delete(self.report["name"])
        except Exception:
            log.warning("could not remove the report of worker %s", self.report["name"], exc_info=True)


@celeryd_after_setup.connect
def _queues_from_env(sender: str, instance: Any, **_: Any) -> None:
    """-Q wins; without it, WORKER_QUEUES picks the queues (Celery would take only `default`)."""
    queues = instance.app.amqp.queues
    if settings.WORKER_QUEUES and queues._consume_from is None:
        queues.select(settings.WORKER_QUEUES)


@worker_ready.connect
def _reporter_start(sender: Any, **_: Any) -> None:
    global _reporter
    queues = list(sender.app.amqp.queues.consume_from)
    _reporter = Reporter(worker_report_build(name=sender.hostname, queues=queues))
    _reporter.start()
    log.info("worker %s consumes %s", sender.hostname, ", ".join(sorted(queues)))


@worker_shutdown.connect
def _reporter_stop(**_: Any) -> None:
    if _reporter is not None:
        _reporter.stop()
