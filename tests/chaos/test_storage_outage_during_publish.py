"""S3 goes away while a job publishes: the job waits in `uploading`, keeps its files, and
succeeds with exactly one version once S3 is back."""

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from django.test import override_settings

from api.jobs.models import Job, JobEvent
from api.registry.models import AdapterVersion
from storage import embedded, s3
from tests.chaos.conftest import Workers
from tests.chaos.helpers import long_job, ready_dataset, wait_status
from tests.conftest import wait_for

KEYS = {"access_key": "outage-key", "secret_key": "outage-secret"}


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = embedded.free_port()
    proc = embedded.seaweedfs_start(tmp_path / "s3", s3_port=port, **KEYS)
    with override_settings(S3_ENDPOINT_URL=f"http://127.0.0.1:{port}", S3_ACCESS_KEY_ID=KEYS["access_key"],
                           S3_SECRET_ACCESS_KEY=KEYS["secret_key"]):
        s3.reset_client()
        s3.bucket_ensure()
        yield port, tmp_path / "s3"
    s3.reset_client()
    embedded.stop(proc)


def test_s3_down_during_publish_then_back_gives_one_version(workers: Workers, own_s3: tuple[int, Path]) -> None:
    port, data_dir = own_s3
    dataset = ready_dataset()
    job = long_job(dataset, "patient", epochs=20)
    workers.start(S3_ENDPOINT_URL=f"http://127.0.0.1:{port}", S3_ACCESS_KEY_ID=KEYS["access_key"],
                  S3_SECRET_ACCESS_KEY=KEYS["secret_key"], CHECKPOINT_EVERY_STEPS="0")
    wait_for(lambda: Job.objects.get(id=job.id), lambda j: j.status == "running" and j.step >= 20, timeout=120)
    # Training no longer needs S3 (the data was read at the start, checkpoints are off): stop it.
    weed = [p for p in psutil.process_iter(["cmdline"]) if f"-s3.port={port}" in " ".join(p.info["cmdline"] or [])]
    assert len(weed) == 1
    weed[0].kill()  # the store vanishes mid-job
    weed[0].wait(30)

    wait_for(lambda: JobEvent.objects.filter(job_id=job.id, type="publish_retry").count(), lambda n: n >= 2,
             timeout=180)
    assert Job.objects.get(id=job.id).status == "uploading"
    assert not AdapterVersion.objects.filter(job_id=job.id).exists()

    restarted = embedded.seaweedfs_start(data_dir, s3_port=port, **KEYS)
    try:
        done = wait_status(job.id, {"succeeded", "failed"}, timeout=180)
        assert done.status == "succeeded", (done.error_message, workers.logs())
        assert AdapterVersion.objects.filter(job_id=job.id).count() == 1
        version = AdapterVersion.objects.get(job_id=job.id)
        for entry in version.files:  # the files really are in the store, whole
            assert len(s3.get_bytes(version.prefix + entry["name"])) == entry["size"]
    finally:
        embedded.stop(restarted)
