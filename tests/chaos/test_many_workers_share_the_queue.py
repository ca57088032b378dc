"""Several worker processes on one machine share one Redis, one S3 and one database: 12 jobs run across them,
each once, each publishing one version, and the workers stopped midway (a deploy's SIGTERM, a crash's kill -9)
lose nothing."""

import os
import signal
import subprocess
import time

from api.jobs.models import Job, JobEvent
from api.registry.models import AdapterVersion
from tests.chaos.conftest import Workers
from tests.chaos.helpers import event_types, long_job, ready_dataset, wait_status
from tests.conftest import wait_for

USERS, JOBS_PER_USER, TRAIN_WORKERS = 4, 3, 3
CHECKPOINTS = {"CHECKPOINT_EVERY_STEPS": "10"}


def _two_workers_past_a_checkpoint(ids: list[int]) -> list[str]:
    """Two worker ids (host:pid) that hold a running job past its first checkpoint."""
    running = Job.objects.filter(id__in=ids, status="running", step__gte=12)
    return sorted({job.worker for job in running})[:2]


def _process(workers: Workers, worker_id: str) -> subprocess.Popen:
    [proc] = [p for p in workers.procs if p.pid == int(worker_id.rsplit(":", 1)[1])]
    return proc


def _requeued_by(ids: list[int], reason: str) -> list[int]:
    """Jobs with a `requeued` event whose message starts with reason (the runner's or the reaper's words)."""
    return sorted(set(JobEvent.objects.filter(job_id__in=ids, type="requeued", message__startswith=reason)
                      .values_list("job_id", flat=True)))


def test_twelve_jobs_across_workers_each_run_once_and_stopped_workers_lose_nothing(workers: Workers) -> None:
    # Four owners, so that the per-user running limit (2) never leaves a worker idle.
    jobs = [long_job(ready_dataset(f"owner{u}"), f"shared-{u}-{i}", epochs=2)  # 40 steps each
            for u in range(USERS) for i in range(JOBS_PER_USER)]
    ids = [job.id for job in jobs]
    workers.reaper()
    for _ in range(TRAIN_WORKERS):
        workers.start(**CHECKPOINTS)

    # Whichever two workers hold jobs past a checkpoint (never assume which jobs they raced for): one gets a
    # deploy's SIGTERM, the other a crash's kill -9, at the same moment.
    deployed, crashed = wait_for(lambda: _two_workers_past_a_checkpoint(ids), lambda pair: len(pair) == 2, 180)
    os.kill(_process(workers, crashed).pid, signal.SIGKILL)
    os.kill(_process(workers, deployed).pid, signal.SIGTERM)
    assert _process(workers, deployed).wait(timeout=90) == 0  # warm shutdown: checkpoint, re-queue, exit 0
    _process(workers, crashed).wait(timeout=10)
    workers.start(**CHECKPOINTS)  # the replacement

    deadline = time.monotonic() + 240
    for job_id in ids:
        done = wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=max(1, deadline - time.monotonic()))
        assert done.status == "succeeded", (done.id, done.error_code, done.error_message, workers.logs())

    versions = AdapterVersion.objects.filter(job_id__in=ids)
    assert sorted(versions.values_list("job_id", flat=True)) == sorted(ids)  # one version per job, no more

    # The job the SIGTERM stopped was re-queued by its worker without spending an attempt; the one the kill -9
    # stopped, by the reaper once its lease expired. Both resumed from a checkpoint and finished elsewhere.
    [sigtermed] = _requeued_by(ids, "worker shutting down")
    [killed] = _requeued_by(ids, f"worker {crashed} stopped renewing its lease")
    assert Job.objects.get(id=sigtermed).attempts == 1
    assert Job.objects.get(id=killed).attempts == 2
    for stopped in (sigtermed, killed):
        assert JobEvent.objects.get(job_id=stopped, type="resumed").data["step"] >= 10, event_types(stopped)
        assert event_types(stopped).count("started") == 2

    # Every other job ran exactly once.
    for job in Job.objects.filter(id__in=ids).exclude(id__in=[sigtermed, killed]):
        assert job.attempts == 1 and event_types(job.id).count("started") == 1, (job.id, event_types(job.id))

    # The queue was shared: jobs started on every training process.
    started = JobEvent.objects.filter(job_id__in=ids, type="started").values_list("message", flat=True)
    assert len({message.split(" ")[2] for message in started}) >= TRAIN_WORKERS
