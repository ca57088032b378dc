"""Run one training job: claim it, train, evaluate, publish exactly one registry version."""

import functools
import gc
import json
import logging
import subprocess
import tempfile
import threading
import time
import uuid
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from api.datasets.examples import Example, examples_load
from api.datasets.models import Dataset
from api.jobs import services
from api.jobs.models import ACTIVE_STATES, ErrorCode, Job, JobStatus
from api.registry.services import adapter_version_publish
from storage import keys, s3
from workers import distributed
from workers.base_models import base_model_get, tokenizer_load
from workers.methods.registry import ConfigError, method_get
from workers.training import engine
from workers.training.callbacks import JobProgressCallback, MethodStepCallback, StopReason
from workers.training.checkpoints import checkpoint_download
from workers.training.data import PROMPT_FORMAT, labels_for
from workers.training.estimate import job_estimate
from workers.training.hyperparameters import Hyperparameters

log = logging.getLogger(__name__)
# kept from the last evaluation; token-classification: accuracy per word, and entity precision/recall/F1
EVAL_METRICS = {"eval_loss", "eval_accuracy", "eval_precision", "eval_recall", "eval_f1"}


class UserInputError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@functools.cache
def code_version() -> str:
    version = pkg_metadata.version("adapter-foundry")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def _examples(dataset: Dataset, tmp: Path) -> list[Example]:
    path = tmp / f"dataset-{dataset.id}"
    s3.download_file(keys.dataset(dataset.sha256), path, sha256=dataset.sha256)
    return examples_load(path, dataset.format, dataset.task, max_line_bytes=settings.DATASET_MAX_LINE_BYTES)


class Heartbeat(threading.Thread):
    """Renews the job's lease every JOB_HEARTBEAT_SECONDS; sets `lost` when the lease is gone."""

    def __init__(self, job_id: int, token: str):
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.token = job_id, token
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(settings.JOB_HEARTBEAT_SECONDS):
                try:
                    renewed = services.job_heartbeat(job_id=self.job_id, token=self.token)
                except Exception:  # the database blinked: try again next beat, the lease has slack
                    log.exception("heartbeat for job %s failed", self.job_id)
                    continue
                if not renewed:
                    self.lost.set()
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def job_train_run(*, job_id: int, worker: str) -> services.Claim:
    """The domain function the Celery task calls. Every outcome is written to the job row."""
    token = uuid.uuid4().hex
    claim = services.job_claim(job_id=job_id, worker=worker, token=token)
    if claim is not services.Claim.CLAIMED:
        job = Job.objects.filter(id=job_id).first()
        if claim is services.Claim.NOT_QUEUED and job is not None and job.status in ACTIVE_STATES:
            log.warning("job %s: refused a second delivery; %s holds it", job_id, job.worker)
            services.job_event_add(job_id=job_id, type="duplicate_refused", level="warning",
                                   message=f"a second delivery reached {worker} and was refused; "
                                           f"{job.worker} holds the job")
        return claim
    heartbeat = Heartbeat(job_id, token)
    heartbeat.start()
    try:
        _train(Job.objects.select_related("dataset", "validation_dataset", "owner").get(id=job_id),
               token=token, lease_lost=heartbeat.lost)
    except (ConfigError, UserInputError) as exc:
        code = ErrorCode.INVALID_CONFIG if isinstance(exc, ConfigError) else ErrorCode.INVALID_FILE
        services.job_fail(job_id=job_id, code=code, message=str(exc), param=exc.param, lease_owner=token)
    except s3.StorageError as exc:
        services.job_fail(job_id=job_id, code=ErrorCode.STORAGE_ERROR, message=str(exc), lease_owner=token)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        services.job_fail(job_id=job_id, code=ErrorCode.WORKER_ERROR, message=f"{type(exc).__name__}: {exc}",
                          lease_owner=token)
    finally:
        heartbeat.stop()
        _free_memory()
    return claim


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _resume_point(job: Job, tmp: Path) -> str | None:
    """The local folder of the last complete checkpoint, or None to start from step 0."""
    checkpoint = services.job_checkpoint_latest(job_id=job.id)
    if checkpoint is None:
        return None
    local = checkpoint_download(prefix=checkpoint.prefix, files=checkpoint.files,
                                local_dir=tmp / "trainer" / f"checkpoint-{checkpoint.step}")
    services.job_metrics_truncate(job_id=job.id, after_step=checkpoint.step)
    services.job_event_add(job_id=job.id, type="resumed", message=f"resuming from the checkpoint at step "
                           f"{checkpoint.step}", data={"step": checkpoint.step})
    return str(local)


def _after_stop(job: Job, reason: str, token: str, step: int) -> None:
    if reason == StopReason.CANCEL:
        services.job_transition(job_id=job.id, from_state=JobStatus.RUNNING, to_state=JobStatus.CANCELLED,
                                message="cancelled on request", lease_owner=token)
    elif reason == StopReason.SHUTDOWN:
        services.job_requeue(job_id=job.id, token=token, count_attempt=False,
                             reason=f"worker shutting down; checkpoint saved at step {step}, re-queued to resume")
    elif reason == StopReason.TIME_LIMIT:
        services.job_fail(job_id=job.id, code=ErrorCode.TIME_LIMIT, lease_owner=token,
                          message=f"stopped at step {step}: over the time limit of "
                                  f"{settings.JOB_TIME_LIMIT_SECONDS} s")
    else:
        log.warning("job %s: lease lost at step %s; leaving it to its new holder", job.id, step)


def _train(job: Job, *, token: str, lease_lost: threading.Event) -> None:
    hp = Hyperparameters(**job.hyperparameters)
    entry = base_model_get(job.base_model)
    method = method_get(job.method)
    with tempfile.TemporaryDirectory(prefix=f"foundry-job-{job.id}-") as tmp_name:
        tmp = Path(tmp_name)
        train_examples = _examples(job.dataset, tmp)
        eval_examples = _examples(job.validation_dataset, tmp) if job.validation_dataset else []
        labels = labels_for(job.task, train_examples)
        label2id = {name: i for i, name in enumerate(labels)} if labels else None
        if labels:
            unseen = sorted(set(labels_for(job.task, eval_examples)) - set(labels))
            if unseen:
                raise UserInputError(f"validation_dataset has labels not in the training data: {unseen[:10]}",
                                     "validation_dataset")
        tokenizer = tokenizer_load(entry)
        train_rows = engine.rows_encode(tokenizer, job.task, train_examples, hp.max_seq_length, label2id,
                                        sha256=job.dataset.sha256)
        eval_rows = engine.rows_encode(tokenizer, job.task, eval_examples, hp.max_seq_length, label2id,
                                       sha256=job.validation_dataset.sha256 if job.validation_dataset else None)
        if hp.processes > 1:
            distributed.processes_check(method, hp.processes, engine.device_pick())
            model, fit = None, distributed.job_fit(  # rank 0 saves the adapter
                job, processes=hp.processes, labels=labels, train_rows=train_rows, eval_rows=eval_rows,
                work=tmp / "ddp", out=tmp / "trainer", adapter=tmp / "adapter", resume=_resume_point(job, tmp),
                lease_lost=lease_lost)
        else:
            model, fit = _fit_here(job, hp, entry, method, tokenizer=tokenizer, labels=labels, train_rows=train_rows,
                                   eval_rows=eval_rows, tmp=tmp, lease_lost=lease_lost)
        if fit.stop_reason:
            _after_stop(job, fit.stop_reason, token, fit.step)
            return
        final = _final_metrics(fit.history)
        if final:
            services.job_event_add(job_id=job.id, type="evaluated", message=_describe(final), data=final)
        if not services.job_transition(job_id=job.id, from_state=JobStatus.RUNNING, to_state=JobStatus.UPLOADING,
                                       message="saving the adapter to the registry", lease_owner=token):
            return
        out = tmp / "adapter"
        if model is not None:
            method.save(model, str(out))
        (out / "README.md").unlink(missing_ok=True)  # peft's stub; publishing writes the real model card
        _base_name_record(out / "adapter_config.json", entry.hub_id or entry.id)
        lineage = _lineage(job, entry, labels, final, fit.trainable)  # publishing writes it as foundry.json
        del model
        _free_memory()
        version = _publish_with_retry(job, out, lineage, lease_lost)
        if version is None:
            return
        services.job_transition(
            job_id=job.id, from_state=JobStatus.UPLOADING, to_state=JobStatus.SUCCEEDED, lease_owner=token,
            message=f"published {job.adapter_name} version {version.version}",
            data={"adapter": job.adapter_name, "version": version.version},
        )


def _fit_here(job: Job, hp: Hyperparameters, entry: Any, method: Any, *, tokenizer: Any, labels: list[str],
              train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], tmp: Path,
              lease_lost: threading.Event) -> tuple[Any, distributed.Result]:
    """Train in this process; the trained model and how training went."""
    engine.threads_configure()
    model = engine.model_build(entry, method, job.method_config, task=job.task, tokenizer=tokenizer,
                               labels=labels, train_rows=train_rows, hp=hp)
    trainable, total = model.get_nb_trainable_parameters()
    device = engine.device_pick()
    callback = JobProgressCallback(
        job.id, tokens_per_example=sum(len(r["input_ids"]) for r in train_rows) / len(train_rows),
        lease_lost=lease_lost,
    )
    resume = _resume_point(job, tmp)
    services.job_event_add(
        job_id=job.id, type="training", message=f"training {job.method} on {len(train_rows)} examples, {device}",
        data={"examples": len(train_rows), "trainable_parameters": trainable, "total_parameters": total,
              "device": device, "bf16": engine.bf16_worthwhile(device) and engine.autocast_safe(model)},
    )

    _estimate_record(job, trainable=trainable, device=device)

    def oom_record(retry: engine.OomRetry) -> None:
        services.job_event_add(
            job_id=job.id, type="oom_retry", level="warning",
            message=f"out of memory; retrying with micro-batch {retry.micro_batch} and gradient accumulation "
                    f"{retry.accumulation} (same effective batch {hp.batch_size})",
            data={"micro_batch": retry.micro_batch, "accumulation": retry.accumulation, "error": retry.error})

    def schedule_record(step: int, end: int, per_step: float) -> None:
        services.job_event_add(
            job_id=job.id, type="schedule_fitted",
            message=f"at {per_step:.2f} s a step the time budget of {hp.max_train_seconds} s ends near step {end}: "
                    f"the learning rate now falls to 0 there",
            data={"step": step, "end_step": end, "seconds_per_step": round(per_step, 4),
                  "max_train_seconds": hp.max_train_seconds})

    trainer = engine.trainer_fit(
        model, task=job.task, tokenizer=tokenizer, hp=hp, train_rows=train_rows, eval_rows=eval_rows,
        out=tmp / "trainer", device=device, resume=resume, on_oom=oom_record, on_schedule_fit=schedule_record,
        training_step=method.training_step,
        callbacks=[callback, *([MethodStepCallback(method.after_step)] if method.after_step else [])],
        splittable=method.data_parallel,
    )
    return model, distributed.Result(stop_reason=callback.stop_reason, step=trainer.state.global_step,
                                     history=trainer.state.log_history, trainable=trainable)


def _estimate_record(job: Job, *, trainable: int, device: str) -> None:
    """The estimate again, on this worker: calibrated time (measured once per base model and device) and the
    exact trainable parameter count. Recorded on the job and as an event; a failure here never fails the job."""
    try:
        estimate = job_estimate(stats=job.dataset.report.get("stats") or {"rows": 0}, base_model=job.base_model,
                                task=job.task, method=job.method, hyperparameters=job.hyperparameters,
                                trainable_parameters=trainable, device=device, measure=True)
    except Exception:
        log.exception("job %s: estimate failed", job.id)
        return
    Job.objects.filter(id=job.id).update(estimate=estimate)
    memory = estimate["peak_memory_bytes"] / 2**20
    services.job_event_add(job_id=job.id, type="estimated", data=estimate,
                           message=f"estimate on {device}: {estimate['steps']} steps, {estimate['tokens']} tokens, "
                                   f"about {estimate['seconds']} s and {memory:.0f} MiB at peak")


def _publish_with_retry(job: Job, out: Path, lineage: dict[str, Any], lease_lost: threading.Event) -> Any:
    """Publish; while S3 is down, keep the files and retry with backoff for PUBLISH_RETRY_SECONDS."""
    deadline = time.monotonic() + settings.PUBLISH_RETRY_SECONDS
    delay = 1.0
    while True:
        try:
            return adapter_version_publish(job=job, directory=out, metadata=lineage)
        except s3.StorageError as exc:
            if time.monotonic() + delay > deadline:
                raise
            services.job_event_add(job_id=job.id, type="publish_retry", level="warning",
                                   message=f"storage unavailable, retrying in {delay:.0f} s: {exc}"[:500])
            if lease_lost.wait(delay):
                return None
            delay = min(delay * 2, 60.0)


def _base_name_record(config_path: Path, name: str) -> None:
    """Name the base by its Hub id (or catalogue id), not by this machine's local path."""
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _final_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    evals = [h for h in history if "eval_loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    final: dict[str, float] = {}
    if losses:
        final["train_loss"] = losses[-1]
    if evals:
        final.update({k: v for k, v in evals[-1].items() if k in EVAL_METRICS})
    return final


def _describe(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))


def _lineage(job: Job, entry: Any, labels: list[str], metrics: dict[str, float], trainable: int) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    datasets = {"train": job.dataset, "validation": job.validation_dataset}
    return {
        "format": 1,
        "adapter": job.adapter_name,
        "job_id": job.id,
        "task": job.task,
        "base_model": {"id": entry.id, "source": entry.hub_id or entry.source, "revision": entry.revision},
        "method": job.method,
        "method_config": job.method_config,
        "loading": method_get(job.method).loading or "peft.PeftModel.from_pretrained(base_model_with_head, folder)",
        "hyperparameters": job.hyperparameters,
        "labels": labels,
        "prompt_format": PROMPT_FORMAT if job.task == "sft" else None,
        "datasets": {k: {"id": d.id, "sha256": d.sha256, "rows": d.rows, "filename": d.filename}
                     for k, d in datasets.items() if d is not None},
        "metrics": metrics,
        "trainable_parameters": trainable,
        "code_version": code_version(),
        "libraries": {"torch": torch.__version__, "transformers": transformers.__version__,
                      "peft": peft.__version__},
        "created_at": timezone.now().isoformat(),
    }
