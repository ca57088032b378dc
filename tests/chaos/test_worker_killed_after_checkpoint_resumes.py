import json

from safetensors.torch import load_file

from api.jobs.models import JobCheckpoint, JobEvent, JobMetric
from api.registry.models import AdapterVersion
from storage import keys, s3
from tests.chaos.conftest import Workers, kill_job_worker
from tests.chaos.helpers import event_types, job_now, long_job, ready_dataset, wait_status
from tests.conftest import wait_for


def _adapter_shapes(job_id: int) -> dict[str, tuple[int, ...]]:
    version = AdapterVersion.objects.get(job_id=job_id)
    data = s3.get_bytes(version.prefix + "adapter_model.safetensors")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.safetensors"
        path.write_bytes(data)
        return {k: tuple(v.shape) for k, v in load_file(path).items()}


def test_kill_9_after_a_checkpoint_resumes_from_it_and_ignores_a_half_written_one(workers: Workers) -> None:
    dataset = ready_dataset()
    job = long_job(dataset, "resumed", epochs=20)  # 400 steps, a checkpoint every 50
    workers.start()
    try:
        first = wait_for(lambda: JobCheckpoint.objects.filter(job_id=job.id).first(), bool, timeout=40)
    except AssertionError:
        print(job_now(job.id).__dict__, event_types(job.id), workers.logs())
        raise
    running = job_now(job.id)
    kill_job_worker(running)
    killed_at = job_now(job.id).step
    assert killed_at < 400

    # A checkpoint the dead worker was half-way through writing: files, but no COMPLETE marker.
    newest = JobCheckpoint.objects.filter(job_id=job.id).order_by("-step").first()
    assert newest is not None and newest.step >= first.step
    half = keys.checkpoint(job.id, newest.step + 1000)
    s3.put_bytes(half + "adapter_model.safetensors", b"truncated")

    workers.start()
    workers.reaper()
    done = wait_status(job.id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done.status == "succeeded", (done.error_message, workers.logs())
    assert done.attempts == 2
    resumed = JobEvent.objects.get(job_id=job.id, type="resumed")
    assert resumed.data["step"] == newest.step > 0
    types = event_types(job.id)
    assert types.count("started") == 2 and types.count("requeued") == 1 and types[-1] == "succeeded"
    assert AdapterVersion.objects.filter(job_id=job.id).count() == 1

    steps = list(JobMetric.objects.filter(job_id=job.id, loss__isnull=False).values_list("step", flat=True))
    assert steps == list(range(1, 401))  # the loss curve continues: each step once, in order
    assert JobCheckpoint.objects.filter(job_id=job.id).count() <= 2  # CHECKPOINT_KEEP prunes old ones
    marker = json.loads(s3.get_bytes(JobCheckpoint.objects.filter(job_id=job.id).first().prefix + "COMPLETE.json"))
    assert not [f for f in marker["files"] if f["name"].endswith((".pt", ".pth", ".bin"))]  # no pickle stored

    baseline = long_job(dataset, "uninterrupted", epochs=1)
    assert wait_status(baseline.id, {"succeeded", "failed"}).status == "succeeded"
    assert _adapter_shapes(job.id) == _adapter_shapes(baseline.id)
