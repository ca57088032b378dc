"""A real `celery worker` process, started without -Q: WORKER_QUEUES picks its queue (a GPU class), it
reports its devices to Redis, a job whose estimate fits that class is routed to it and runs, every log
line the job causes is JSON with the job id, and a stopped worker's report is gone."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings

from api.celery import app
from api.jobs.models import Job
from api.jobs.services import job_send
from api.ops.routing import GIB, gpu_queues_parse
from api.ops.selectors import queue_depths, workers_list
from tests.chaos.helpers import ready_dataset, wait_status
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = django_settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db.get('USER') or ''}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/" \
           f"{db['NAME']}"


def _job_window(lines: list[str], job_id: int) -> list[dict[str, Any]]:
    """The worker's log records from "Task workers.tasks.job_train[...] received" for this job to its
    "succeeded" line."""
    records = [json.loads(line) for line in lines]  # every line is JSON, the job's or not
    start = next(i for i, r in enumerate(records) if "job_train" in r["message"] and "received" in r["message"]
                 and r.get("job_id") == job_id)
    end = next(i for i, r in enumerate(records) if i > start and "succeeded in" in r["message"])
    return records[start:end + 1]


def test_gpu_class_worker_reports_runs_its_job_and_logs_json(transactional_db: None, bucket: None, settings: Any,
                                                              tmp_path: Path) -> None:
    settings.GPU_QUEUES = gpu_queues_parse("train-24g:24,train-80g:80")
    with app.connection_for_write() as conn:
        for queue in ("train", "train-24g", "train-80g"):
            conn.default_channel.queue_purge(queue)
    env = {**os.environ, "DATABASE_URL": _database_url(), "LOG_FORMAT": "json", "WORKER_QUEUES": "train-24g",
           "GPU_QUEUES": "train-24g:24,train-80g:80", "WORKER_REPORT_SECONDS": "1", "TRAIN_THREADS": "1",
           "JOB_HEARTBEAT_SECONDS": "1"}
    stderr = tmp_path / "worker.err"
    with open(tmp_path / "worker.out", "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "api", "worker", "--pool=solo", "-n",
                                 "gpu0@%h", "--loglevel=INFO", "--without-mingle", "--without-gossip"],
                                cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        name = f"gpu0@{socket.gethostname()}"
        report = wait_for(lambda: next((w for w in workers_list() if w["name"] == name), None), bool, timeout=90)
        assert report["queues"] == ["train-24g"] and report["pid"] == proc.pid
        assert report["devices"]["cpu"]["usable"] >= 1 and report["devices"]["cuda"] == []

        dataset = ready_dataset("gpu-routing")
        Job.objects.all().update(status="cancelled")  # nothing else in this database competes for the worker
        job = _tiny_job(dataset)
        assert queue_depths(names=["train", "train-24g"]) == {"train": 1, "train-24g": 0}  # unestimated: `train`
        Job.objects.filter(id=job.id).update(estimate={"peak_memory_bytes": 3 * GIB})
        job_send(job_id=job.id, priority=5)  # now the 24 GiB class fits: its queue, where the worker listens
        assert wait_status(job.id, {"succeeded", "failed"}, timeout=240).status == "succeeded"
        assert Job.objects.get(id=job.id).worker == f"{socket.gethostname()}:{proc.pid}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert all(w["name"] != name for w in workers_list())  # a stopped worker removes its report
    window = _job_window(stderr.read_text().splitlines(), job.id)
    assert len(window) >= 3 and all(r.get("job_id") == job.id for r in window), window
    assert any(r["logger"].startswith("workers.") for r in window)  # the job's own lines, not only Celery's


def _tiny_job(dataset: Any) -> Job:
    from api.jobs.services import job_create

    return job_create(user=dataset.owner, base_model="tiny-bert", task="classification", dataset=dataset.id,
                      adapter_name="routed", hyperparameters={"epochs": 1, "batch_size": 20})
