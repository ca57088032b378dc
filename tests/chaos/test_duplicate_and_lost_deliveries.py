"""Celery's redeliveries and lost messages never train a job twice, and never lose one."""

import subprocess
import time

import redis
from django.conf import settings

from api.jobs.models import Job, JobEvent
from api.registry.models import AdapterVersion
from storage.embedded import free_port, redis_start, stop
from tests.chaos.conftest import Workers
from tests.chaos.helpers import event_types, long_job, ready_dataset, wait_status
from tests.conftest import wait_for


def test_visibility_timeout_redelivery_while_the_first_worker_runs_is_refused(workers: Workers) -> None:
    dataset = ready_dataset()
    job = long_job(dataset, "once", epochs=40)  # long enough to outlive a 2 s visibility timeout
    quick_redelivery = {"BROKER_VISIBILITY_TIMEOUT": "2"}
    workers.start(**quick_redelivery)
    wait_status(job.id, {"running"}, timeout=120)
    workers.start(**quick_redelivery)  # a second worker that will receive the restored message
    wait_for(lambda: JobEvent.objects.filter(job_id=job.id, type="duplicate_refused").exists(), bool, timeout=120)
    done = wait_status(job.id, {"succeeded", "failed"}, timeout=240)
    assert done.status == "succeeded", workers.logs()
    assert done.attempts == 1 and event_types(job.id).count("started") == 1
    assert AdapterVersion.objects.filter(job_id=job.id).count() == 1


def test_redis_restarted_with_10_queued_jobs_runs_each_exactly_once(workers: Workers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    broker = redis_start(tmp_path / "redis", port=port)
    own_redis = {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    try:
        dataset = ready_dataset()
        jobs = [long_job(dataset, f"job-{i}", epochs=1) for i in range(10)]  # their messages went elsewhere
        Job.objects.filter(id__in=[j.id for j in jobs]).update(queued_at="2000-01-01T00:00:00Z")
        workers.reaper(**own_redis)  # finds them queued for long and sends their messages to this Redis
        prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]
        client = redis.Redis(port=port)
        wait_for(lambda: sum(client.llen(k) for k in client.keys(f"{prefix}train*")), lambda n: n >= 10, 60)

        stop(broker)  # a clean restart: Redis writes its append-only file and comes back with it
        broker = redis_start(tmp_path / "redis", port=port)
        workers.start(**own_redis)
        workers.start(**own_redis)
        for job in jobs:
            assert wait_status(job.id, {"succeeded", "failed"}, timeout=240).status == "succeeded", workers.logs()
        for job in jobs:
            assert Job.objects.get(id=job.id).attempts == 1
            assert event_types(job.id).count("started") == 1
            assert AdapterVersion.objects.filter(job_id=job.id).count() == 1
    finally:
        stop(broker)


def test_a_job_that_kills_its_worker_every_time_fails_as_worker_lost_and_the_queue_moves(workers: Workers) -> None:
    dataset = ready_dataset()
    doomed = long_job(dataset, "doomed", epochs=50, priority=9)
    behind = long_job(dataset, "behind", epochs=1, priority=1)
    workers.reaper()
    for attempt in range(1, 4):
        proc = workers.start()
        running = wait_for(lambda: Job.objects.get(id=doomed.id),
                           lambda j, n=attempt: j.status == "running" and j.attempts == n, timeout=120)
        proc.kill()  # the job "kills its worker": SIGKILL, no cleanup, no ack
        proc.wait()
        assert running.attempts == attempt
    failed = wait_status(doomed.id, {"failed", "succeeded"}, timeout=60)
    assert failed.status == "failed" and failed.error_code == "worker_lost", workers.logs()
    assert "3 times" in failed.error_message and failed.attempts == 3
    workers.start()
    assert wait_status(behind.id, {"succeeded", "failed"}, timeout=120).status == "succeeded"
    assert not AdapterVersion.objects.filter(job_id=doomed.id).exists()


def test_a_user_over_the_running_limit_waits(workers: Workers) -> None:
    dataset = ready_dataset()
    jobs = [long_job(dataset, "first", epochs=8), long_job(dataset, "second", epochs=1)]
    ids = [j.id for j in jobs]
    limit_one = {"MAX_RUNNING_JOBS_PER_USER": "1"}
    workers.start(**limit_one)
    workers.start(**limit_one)  # two free workers, but the owner may hold one slot only
    deadline = time.monotonic() + 300
    while True:  # either job may be claimed first (two workers race); never both at once
        status = dict(Job.objects.filter(id__in=ids).values_list("id", "status"))
        assert sum(s in {"running", "uploading"} for s in status.values()) <= 1, status
        if all(s in {"succeeded", "failed", "cancelled"} for s in status.values()):
            break
        assert time.monotonic() < deadline, (status, workers.logs())
        time.sleep(0.05)
    done = sorted(Job.objects.filter(id__in=ids), key=lambda j: j.started_at)
    assert [j.status for j in done] == ["succeeded", "succeeded"], workers.logs()
    assert done[1].started_at >= done[0].finished_at  # the second waited for the first to finish


def test_sigterm_saves_a_checkpoint_and_requeues_without_spending_an_attempt(workers: Workers) -> None:
    dataset = ready_dataset()
    job = long_job(dataset, "deployed", epochs=30)
    proc = workers.start(CHECKPOINT_EVERY_STEPS="0")
    wait_for(lambda: Job.objects.get(id=job.id), lambda j: j.status == "running" and j.step >= 20, timeout=120)
    proc.send_signal(subprocess.signal.SIGTERM)  # what a deploy does: warm shutdown
    assert proc.wait(timeout=60) == 0
    requeued = Job.objects.get(id=job.id)
    assert requeued.status == "queued" and requeued.attempts == 0, workers.logs()
    saved = requeued.checkpoints.get()
    assert saved.step >= 20
    workers.start()
    done = wait_status(job.id, {"succeeded", "failed"}, timeout=240)
    assert done.status == "succeeded" and done.attempts == 1
    assert JobEvent.objects.get(job_id=job.id, type="resumed").data["step"] == saved.step
