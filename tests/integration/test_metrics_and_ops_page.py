"""/metrics (Prometheus text, loopback or METRICS_TOKEN), the staff-only operators' page and
GET /api/v1/ops/workers, against the real Redis (queue lists, worker reports) and database."""

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from api.celery import app
from api.jobs.models import ErrorCode, JobStatus
from api.jobs.services import job_fail
from api.ops import broker
from api.ops.selectors import WORKER_KEY, queue_depths
from storage.embedded import free_port
from tests.chaos.helpers import long_job, ready_dataset
from tests.conftest import make_client, wait_for
from workers.capabilities import devices_report, worker_report_build, worker_report_write
from workers.tasks import job_train

ROOT = Path(__file__).resolve().parents[2]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _purge() -> None:
    with app.connection_for_write() as conn:
        for queue in ("default", "train", "train-24g"):
            conn.default_channel.queue_purge(queue)


@pytest.fixture
def empty_queues() -> Iterator[None]:
    _purge()
    yield
    _purge()
    client = broker.client()
    for key in client.scan_iter(match=broker.key(WORKER_KEY) + "*"):
        client.delete(key)


@pytest.fixture
def staff(db: None) -> APIClient:
    client = make_client("operator")
    get_user_model().objects.filter(username="operator").update(is_staff=True)
    client.user.refresh_from_db()  # type: ignore[attr-defined]
    client.force_login(client.user)  # type: ignore[attr-defined]
    return client


def test_queue_depth_sums_every_priority_step(empty_queues: None) -> None:
    for priority in (0, 3, 9, 9):  # kombu keeps one Redis list per priority step: "train", "train\x06\x163", ...
        job_train.apply_async((10**9,), priority=priority, queue="train")
    job_train.apply_async((10**9,), queue="train-24g")
    depths = queue_depths(names=["default", "train", "train-24g"])
    assert depths == {"default": 0, "train": 4, "train-24g": 1}
    assert broker.client().llen(broker.key("train\x06\x169")) == 2  # the layout the sum relies on


def test_metrics_report_requests_queue_jobs_and_workers(transactional_db: None, empty_queues: None,
                                                        alice: APIClient) -> None:
    dataset = ready_dataset("metrics")
    queued, failed = long_job(dataset, "queued"), long_job(dataset, "failed")
    job_fail(job_id=failed.id, code=ErrorCode.STORAGE_ERROR, message="S3 down")
    assert alice.get(f"/api/v1/jobs/{queued.id}").status_code == 404  # alice's 404 is counted by route
    worker_report_write(worker_report_build(name="train@box", queues=["train", "train-24g"]))

    response = Client().get("/metrics")  # the test client is a loopback client
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=")
    samples = _samples(response.content.decode())
    route = "/api/v1/jobs/<int:job_id>"
    assert samples[("foundry_http_requests_total", (("method", "GET"), ("route", route), ("status", "404")))] >= 1
    assert samples[("foundry_http_request_duration_seconds_count", (("method", "GET"), ("route", route)))] >= 1
    assert samples[("foundry_queue_depth", (("queue", "train"),))] == 2  # both were sent; one failed since
    assert samples[("foundry_jobs", (("status", JobStatus.QUEUED),))] == 1
    assert samples[("foundry_jobs_running", ())] == 0
    assert samples[("foundry_job_failures_total", (("code", "storage_error"),))] == 1
    assert samples[("foundry_queued_job_wait_seconds_count", ())] == 1
    assert samples[("foundry_queued_job_oldest_wait_seconds", ())] >= 0
    assert samples[("foundry_workers", (("queue", "train-24g"),))] == 1
    assert samples[("foundry_workers", (("queue", "default"),))] == 0
    assert all(samples[("foundry_scrape_error", (("source", s),))] == 0 for s in ("redis", "database", "workers"))


def test_metrics_need_loopback_or_the_token(db: None, settings: Any) -> None:
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 403
    settings.METRICS_TOKEN = "s3cret-metrics"
    assert Client().get("/metrics").status_code == 403  # with a token set, loopback alone is not enough
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    ok = Client(REMOTE_ADDR="10.1.2.3").get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics")
    assert ok.status_code == 200 and b"foundry_queue_depth" in ok.content


def test_operators_page_and_workers_api_are_staff_only(empty_queues: None, staff: APIClient,
                                                       alice: APIClient) -> None:
    worker_report_write(worker_report_build(name="gpu@node-7", queues=["train-24g"]))
    job_train.apply_async((10**9,), queue="train-24g")

    page = staff.get("/ops")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'href="/ops"' in html and "Operators" in html  # the nav link, for staff
    assert "gpu@node-7" in html and "train-24g" in html and "/metrics" in html
    api = staff.get("/api/v1/ops/workers").json()
    (report,) = api["data"]
    assert report["name"] == "gpu@node-7" and report["queues"] == ["train-24g"] and report["running_jobs"] == []
    assert report["devices"]["cpu"]["cores"] >= 1 and report["devices"]["cpu"]["memory_bytes"] > 0
    assert api["queues"]["train"] == 0

    alice.force_login(alice.user)  # type: ignore[attr-defined]
    assert alice.get("/ops").status_code == 403
    assert alice.get("/api/v1/ops/workers").status_code == 403
    assert 'href="/ops"' not in alice.get("/jobs").content.decode()
    assert Client().get("/ops").status_code == 302  # anonymous: to the sign-in page


def test_devices_report_describes_this_machine() -> None:
    report = devices_report()
    assert report["cpu"]["usable"] >= 1 and report["cuda"] == []  # this CPU machine has no CUDA device
    assert report["train_device"] == "auto"


def test_several_web_processes_count_every_request_once(transactional_db: None, tmp_path: Path) -> None:
    """`python -m api.web` with WEB_WORKERS=2: the /metrics of either process adds up the requests both served
    (prometheus_client's multiprocess mode); per-process counters would show about half of them."""
    from tests.chaos.conftest import _database_url

    port = free_port()
    env = {**os.environ, "DATABASE_URL": _database_url(), "WEB_WORKERS": "2", "WEB_WARM": "false"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = open(tmp_path / "web.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "api.web", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    answered: list[int] = []

    def get(path: str) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Connection": "close"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, body = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode()
        except OSError:
            return 0, ""  # not listening yet: no process saw it
        if path == "/api/v1/health":
            answered.append(status)
        return status, body

    try:
        wait_for(lambda: get("/api/v1/health")[0], bool, timeout=120)
        web = psutil.Process(proc.pid)
        # uvicorn's two worker processes (multiprocessing's spawn; its resource tracker is a child too)
        wait_for(lambda: [c for c in web.children() if "spawn_main" in " ".join(c.cmdline())], lambda c: len(c) == 2,
                 timeout=60)
        for _ in range(40):  # a fresh connection each: both processes accept from the shared socket
            get("/api/v1/health")
        status, text = get("/metrics")
        assert status == 200, text
        counted = sum(value for (name, labels), value in _samples(text).items()
                      if name == "foundry_http_requests_total" and ("route", "/api/v1/health") in labels)
        assert counted == len(answered) >= 41, (counted, len(answered))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
