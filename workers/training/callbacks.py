"""Progress through Trainer callbacks: metrics and events as rows; cancel, a lost lease, a
worker shutdown and the time limit as should_training_stop; checkpoints as should_save."""

import functools
import math
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from transformers import TrainerCallback

from api.jobs import services
from storage import keys, s3
from workers.training.checkpoints import checkpoint_upload


class StopReason:
    CANCEL = "cancel"
    LEASE_LOST = "lease_lost"
    SHUTDOWN = "shutdown"
    TIME_LIMIT = "time_limit"


def worker_shutting_down() -> bool:
    """True once the Celery worker got SIGTERM (warm shutdown), e.g. during a deploy."""
    from celery.worker import state as worker_state

    # The flags hold the exit code once set, and a clean exit code is 0: compare with None.
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


class JobProgressCallback(TrainerCallback):
    def __init__(self, job_id: int, *, tokens_per_example: float, lease_lost: threading.Event,
                 started: float | None = None):
        self.job_id = job_id
        self.tokens_per_example = tokens_per_example
        self.lease_lost = lease_lost
        self.stop_reason: str | None = None
        self.job_started = started or time.monotonic()
        self._start = time.monotonic()
        self._first_step = 0
        self._last = (self._start, 0)
        self._last_checkpoint = time.monotonic()

    @property
    def cancelled(self) -> bool:
        return self.stop_reason == StopReason.CANCEL

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = self._last_checkpoint = time.monotonic()
        self._first_step = state.global_step
        self._last = (self._start, state.global_step)
        services.job_progress_update(job_id=self.job_id, step=state.global_step, total_steps=state.max_steps,
                                     epoch=float(state.epoch or 0.0), eta_seconds=None)

    def _stop_reason(self) -> str | None:
        if self.lease_lost.is_set():
            return StopReason.LEASE_LOST
        if services.job_cancel_requested(job_id=self.job_id):
            return StopReason.CANCEL
        if worker_shutting_down():
            return StopReason.SHUTDOWN
        if time.monotonic() - self.job_started > settings.JOB_TIME_LIMIT_SECONDS:
            return StopReason.TIME_LIMIT
        return None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        elapsed = time.monotonic() - self._start
        done = state.global_step - self._first_step
        eta = math.ceil(elapsed / done * (state.max_steps - state.global_step)) if done else None
        services.job_progress_update(job_id=self.job_id, step=state.global_step, total_steps=state.max_steps,
                                     epoch=float(state.epoch or 0.0), eta_seconds=eta)
        self.stop_reason = self._stop_reason()
        if self.stop_reason:
            control.should_training_stop = True
            # A deploy saves where it is, so the next worker resumes there.
            control.should_save = self.stop_reason == StopReason.SHUTDOWN
            return
        every_steps, every_seconds = settings.CHECKPOINT_EVERY_STEPS, settings.CHECKPOINT_EVERY_SECONDS
        due_by_steps = every_steps and state.global_step % every_steps == 0
        due_by_time = every_seconds and time.monotonic() - self._last_checkpoint >= every_seconds
        if (due_by_steps or due_by_time) and state.global_step < state.max_steps:
            control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        prefix = keys.checkpoint(self.job_id, step)
        files = checkpoint_upload(local_dir=local, prefix=prefix)
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        for old in services.job_checkpoint_record(job_id=self.job_id, step=step, epoch=float(state.epoch or 0.0),
                                                  prefix=prefix, files=files,
                                                  metrics={"loss": losses[-1]} if losses else {}):
            s3.delete_prefix(old)
        self._last_checkpoint = time.monotonic()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" not in logs and "eval_loss" not in logs:
            return
        now = time.monotonic()
        last_time, last_step = self._last
        samples = ((state.global_step - last_step) * args.per_device_train_batch_size * args.gradient_accumulation_steps
                   * args.world_size)  # every process's share of the batch
        tokens_per_second = samples * self.tokens_per_example / (now - last_time) if now > last_time else None
        if "loss" in logs:
            self._last = (now, state.global_step)
        services.job_metric_add(
            job_id=self.job_id, step=state.global_step, epoch=float(state.epoch or 0.0),
            loss=logs.get("loss"), eval_loss=logs.get("eval_loss"), eval_accuracy=logs.get("eval_accuracy"),
            learning_rate=logs.get("learning_rate"),
            tokens_per_second=tokens_per_second if "loss" in logs else None,
        )

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop_reason:  # a stop mid-epoch is not the end of an epoch
            return
        services.job_event_add(job_id=self.job_id, type="epoch_end", message=f"epoch {round(state.epoch or 0)} done",
                               data={"step": state.global_step, "epoch": state.epoch})


def _lambdas_replace(lr_scheduler: Any, make: Any) -> bool:
    """Each of the scheduler's learning-rate lambdas f becomes make(f). False (nothing changed) for a scheduler
    that is not a LambdaLR."""
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper, if any
    if not hasattr(scheduler, "lr_lambdas"):
        return False
    scheduler.lr_lambdas = [make(f) for f in scheduler.lr_lambdas]
    return True


def schedule_restart(lr_scheduler: Any, start: int, total: int) -> bool:
    """From step `start` on, the learning rate starts again at its peak and falls linearly to 0 at `total`: a
    new phase trained as its own run. False (nothing changed) for a scheduler that is not a LambdaLR."""

    def restarted(step: int, before: Any) -> float:
        return before(step) if step < start else max(0.0, (total - step) / max(1, total - start))

    return _lambdas_replace(lr_scheduler, lambda f: functools.partial(restarted, before=f))


def schedule_end_at(lr_scheduler: Any, start: int, end: int) -> bool:
    """From step `start` on, the learning rate falls linearly from where it is to 0 at step `end` (never above
    the schedule it had: a warmup still under way goes on under the new line). False (nothing changed) for a
    scheduler that is not a LambdaLR."""
    end = max(end, start + 1)

    def ended(step: int, before: Any, at_start: float) -> float:
        if step < start:
            return float(before(step))
        return min(float(before(step)), at_start * max(0.0, (end - step) / (end - start)))

    return _lambdas_replace(lr_scheduler, lambda f: functools.partial(ended, before=f, at_start=float(f(start))))


class MethodStepCallback(TrainerCallback):
    """A method's own per-step work (AdaLoRA's rank allocation, LT-SFT's selection), after the optimizer step and
    before the gradients are zeroed; global_step counts the step only afterwards, hence the + 1.

    A method whose model has `phase_start` (an int once a phase that restarts from fresh weights has begun:
    LT-SFT's sparse phase) gets that phase trained as its own run: the optimizer's moments are cleared when it
    begins and the learning-rate schedule starts again from its peak (also when a job resumes inside it)."""

    def __init__(self, after_step: Any):
        self.after_step = after_step

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, lr_scheduler: Any = None,
                       **kwargs: Any) -> None:
        start = getattr(model, "phase_start", None)
        if start is not None and lr_scheduler is not None:  # resumed inside the later phase
            schedule_restart(lr_scheduler, start, state.max_steps)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                          lr_scheduler: Any = None, **kwargs: Any) -> None:
        before = getattr(model, "phase_start", None)
        self.after_step(model, state.global_step + 1)
        start = getattr(model, "phase_start", None)
        if start is not None and start != before:
            if optimizer is not None:
                getattr(optimizer, "optimizer", optimizer).state.clear()  # fresh Adam moments for the new phase
            if lr_scheduler is not None:
                schedule_restart(lr_scheduler, start, state.max_steps)
