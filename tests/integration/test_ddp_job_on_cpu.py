"""A job in 2 processes (DDP through accelerate; gloo on CPU, one thread each): rank 0 alone writes progress,
metrics, events and checkpoints; a worker shutdown mid-run saves a checkpoint that the next run resumes
from; the job publishes one version that plain peft loads."""

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from celery.worker import state as worker_state
from django.db import connection
from peft import PeftModel

from api.jobs.models import ErrorCode, JobCheckpoint, JobEvent, JobMetric
from api.jobs.services import JobInputError, job_create
from api.registry.models import AdapterVersion
from storage import s3
from tests.chaos.helpers import event_types, job_now, ready_dataset
from tests.conftest import SENTIMENT
from workers.base_models import base_model_get, model_load, tokenizer_load
from workers.training.runner import job_train_run

STEPS = 200  # 40 rows, batch 4 (2 per process): 10 steps an epoch, 20 epochs


def _shut_down_after_first_checkpoint(job_id: int, run_over: threading.Event, signalled: threading.Event) -> None:
    """What Celery's SIGTERM handler does, once the job has a periodic checkpoint."""
    try:
        while not run_over.wait(0.1):
            if JobCheckpoint.objects.filter(job_id=job_id).exists():
                worker_state.should_stop = 0
                signalled.set()
                return
    finally:
        connection.close()


def test_two_process_job_resumes_from_a_mid_run_checkpoint_and_publishes_once(
        transactional_db: None, bucket: None, settings: object, tmp_path: Path) -> None:
    settings.CHECKPOINT_EVERY_STEPS = 20  # type: ignore[attr-defined]
    settings.CHECKPOINT_EVERY_SECONDS = 0  # type: ignore[attr-defined]
    dataset = ready_dataset("ddp")
    job = job_create(user=dataset.owner, base_model="tiny-bert", task="classification", dataset=dataset.id,
                     validation_dataset=dataset.id, adapter_name="ddp",
                     hyperparameters={"epochs": 20, "batch_size": 4, "learning_rate": 0.01, "processes": 2})

    run_over, signalled = threading.Event(), threading.Event()
    watcher = threading.Thread(target=_shut_down_after_first_checkpoint, args=(job.id, run_over, signalled))
    watcher.start()
    try:
        job_train_run(job_id=job.id, worker="ddp-host:1")
    finally:
        run_over.set()
        watcher.join()
        worker_state.should_stop = None
    stopped = job_now(job.id)
    assert signalled.is_set() and stopped.status == "queued", (
        signalled.is_set(), stopped.status, stopped.error_code, stopped.error_message, event_types(job.id))
    assert "requeued" in event_types(job.id)
    steps = sorted(JobCheckpoint.objects.filter(job_id=job.id).values_list("step", flat=True))
    assert steps[0] % 20 == 0 and 0 < steps[-1] < STEPS  # a periodic one, then the shutdown's

    job_train_run(job_id=job.id, worker="ddp-host:2")
    done = job_now(job.id)
    assert done.status == "succeeded", (done.error_code, done.error_message)
    assert JobEvent.objects.get(job_id=job.id, type="resumed").data["step"] == steps[-1]

    trainings = list(JobEvent.objects.filter(job_id=job.id, type="training").order_by("seq"))
    assert len(trainings) == 2  # one per run, from rank 0 alone
    for event in trainings:
        assert event.data["processes"] == 2 and event.data["backend"] == "gloo"
        assert [r["rank"] for r in event.data["ranks"]] == [0, 1]
        pids = {r["pid"] for r in event.data["ranks"]}
        assert len(pids) == 2 and os.getpid() not in pids
    # the loss curve continues across the resume, each step once (the other rank writes no metrics)
    losses = list(JobMetric.objects.filter(job_id=job.id, loss__isnull=False).order_by("step")
                  .values_list("step", flat=True))
    assert losses == list(range(1, STEPS + 1))

    checkpoint = JobCheckpoint.objects.filter(job_id=job.id).order_by("-step").first()
    assert checkpoint is not None
    names = {f["name"] for f in checkpoint.files}
    assert {"rng_state_0.state.safetensors", "rng_state_1.state.safetensors"} <= names  # every rank's RNG
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin"))]

    version = AdapterVersion.objects.get(job_id=job.id)
    for name in ("adapter_config.json", "adapter_model.safetensors", "foundry.json"):
        (tmp_path / name).write_bytes(s3.get_bytes(version.prefix + name))
    lineage = json.loads((tmp_path / "foundry.json").read_text())
    assert lineage["hyperparameters"]["processes"] == 2
    entry = base_model_get("tiny-bert")
    tokenizer = tokenizer_load(entry)
    base = model_load(entry, task="classification", vocab_size=len(tokenizer), labels=lineage["labels"])
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    batch = tokenizer([row["text"] for row in SENTIMENT], return_tensors="pt", padding=True)
    with torch.no_grad():
        predicted = [lineage["labels"][i] for i in loaded(**batch).logits.argmax(-1)]
    accuracy = sum(p == row["label"] for p, row in zip(predicted, SENTIMENT, strict=True)) / len(SENTIMENT)
    assert accuracy == lineage["metrics"]["eval_accuracy"] == 1.0


def test_processes_are_bounded_and_methods_that_step_themselves_are_refused(transactional_db: None,
                                                                            bucket: None) -> None:
    dataset = ready_dataset("ddp-refused")
    with pytest.raises(JobInputError) as exc:
        job_create(user=dataset.owner, base_model="tiny-bert", task="classification", dataset=dataset.id,
                   adapter_name="too-many", hyperparameters={"processes": 9})
    assert exc.value.param == "hyperparameters.processes"

    job = job_create(user=dataset.owner, base_model="tiny-bert", task="classification", dataset=dataset.id,
                     method="mezo", adapter_name="mezo-ddp", hyperparameters={"processes": 2})
    job_train_run(job_id=job.id, worker="ddp-host:3")
    failed = job_now(job.id)
    assert (failed.status, failed.error_code, failed.error_param) == (
        "failed", ErrorCode.INVALID_CONFIG, "hyperparameters.processes")
    assert "mezo" in failed.error_message
