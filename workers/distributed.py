"""A job in several processes (DDP), launched through `accelerate launch` from the worker.

The worker process keeps the job: its lease (the heartbeat thread), the datasets, the resume point and
publishing, exactly as for a one-process job. Only the fit runs in N processes on this machine:

    worker --- accelerate launch --num_processes N -m workers.distributed <job_id> --work ... --out ...
                 rank 0       builds the model, trains its shard of every batch; writes progress, metrics,
                              events and checkpoints; saves the adapter and result.json
                 rank 1..N-1  build the same model, train their shards, write nothing

Every rank reads the rows the worker encoded (work/rows.json) and builds the model; DDP copies rank 0's
weights to the others when the Trainer wraps it and averages the gradients at every step. On CUDA each
rank takes one GPU (NCCL); on CPU the ranks share the cores (gloo). Rank 0 decides to stop (cancel, time
limit, a shutdown or a lost lease, which the worker relays as flag files) and broadcasts the decision at
every step end, so all ranks leave the loop together. A checkpoint is uploaded after a barrier, once
every rank has written its RNG state into the shared folder; on resume every rank reads the checkpoint
the worker downloaded. One machine only: the ranks share the worker's temporary folder.
"""

import argparse
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import django

if __name__ == "__main__":  # a rank, started by accelerate: Django before the modules that use its models
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "api.settings")
    django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from storage.embedded import free_port  # noqa: E402
from workers.training.callbacks import JobProgressCallback, StopReason, worker_shutting_down  # noqa: E402

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
ROWS, RESULT, LOG = "rows.json", "result.json", "launch.log"
LEASE_LOST, SHUTDOWN = "lease_lost", "shutdown"  # flag files the worker writes for rank 0
PARENT_PID = "FOUNDRY_DDP_PARENT_PID"
# The ranks run with the worker's values of these (they read settings from the environment)
FORWARDED = ("CHECKPOINT_EVERY_STEPS", "CHECKPOINT_EVERY_SECONDS", "CHECKPOINT_KEEP", "JOB_TIME_LIMIT_SECONDS",
             "TRAIN_DEVICE")
STOP_GRACE_SECONDS = 30
LOG_KEEP_CHARS = 20_000
RANK_PREFIX = re.compile(r"^\[rank\d+\]:")  # torch.distributed tags each rank's lines
EXCEPTION_LINE = re.compile(r"^(?:[a-z_]\w*\.)*[A-Z]\w*(?:: .*)?$")  # a traceback's last line


class DistributedError(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    """What rank 0 reports back to the worker (work/result.json)."""

    stop_reason: str | None
    step: int
    history: list[dict[str, Any]]
    trainable: int


def processes_check(method: Any, processes: int, device: str) -> None:
    """Refuse what DDP cannot do: methods that change weights (MeZO) or which weights train (LISA, LT-SFT,
    AdaLoRA's rank budget) outside the optimizer's averaged step would drift apart across the ranks."""
    from workers.methods.registry import ConfigError

    if not method.data_parallel:
        raise ConfigError(f"method {method.name} updates its weights outside the optimizer step, which several "
                          "processes cannot keep in step; use processes 1", "hyperparameters.processes")
    if device == "cuda":
        import torch

        if processes > torch.cuda.device_count():
            raise ConfigError(f"processes {processes} needs one GPU each; this worker has "
                              f"{torch.cuda.device_count()}", "hyperparameters.processes")
    elif processes > len(os.sched_getaffinity(0)):
        raise ConfigError(f"processes {processes} needs a CPU core each; this worker has "
                          f"{len(os.sched_getaffinity(0))}", "hyperparameters.processes")


# --- the worker's side ------------------------------------------------------------------------------------


def job_fit(job: Any, *, processes: int, labels: list[str], train_rows: list[dict[str, Any]],
            eval_rows: list[dict[str, Any]], work: Path, out: Path, adapter: Path, resume: str | None,
            lease_lost: threading.Event) -> Result:
    """Train the job in `processes` ranks and wait for them. Rank 0 saves the adapter into `adapter` unless
    training stopped early; `out` is the Trainer's folder (checkpoints; `resume` lies inside it)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / ROWS).write_text(json.dumps({"labels": labels, "train": train_rows, "eval": eval_rows},
                                        separators=(",", ":")))
    from workers.training import engine

    # measured once, here: a rank in bf16 and another in fp32 would not even agree on the weights' sizes
    bf16 = engine.bf16_worthwhile(engine.device_pick())
    argv = _launch_argv(job.id, processes, work=work, out=out, adapter=adapter, resume=resume, bf16=bf16)
    with open(work / LOG, "wb") as launch_log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=_rank_env(processes), stdout=launch_log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # a signal to the worker's group is the worker's to relay
    log.info("job %s: launched %s processes (pid %s)", job.id, processes, proc.pid)
    try:
        _watch(proc, work, lease_lost)
    finally:
        _stop(proc)
    if proc.returncode != 0 or not (work / RESULT).exists():
        output = (work / LOG).read_text(errors="replace")[-LOG_KEEP_CHARS:]
        log.error("job %s: the training processes failed (exit %s):\n%s", job.id, proc.returncode, output)
        raise DistributedError(f"training in {processes} processes failed (exit {proc.returncode}): "
                               f"{_rank_error(output)}")
    return Result(**json.loads((work / RESULT).read_text()))


def _rank_error(output: str) -> str:
    """The exception a rank died of (the launcher's own ChildFailedError summary says nothing)."""
    lines = [RANK_PREFIX.sub("", line).strip() for line in output.splitlines()]
    errors = [line for line in lines if EXCEPTION_LINE.match(line) and "ChildFailedError" not in line]
    return (errors[-1] if errors else output.strip().splitlines()[-1] if output.strip() else "no output")[:800]


def _launch_argv(job_id: int, processes: int, *, work: Path, out: Path, adapter: Path, resume: str | None,
                 bf16: bool) -> list[str]:
    # An explicit config, so that a user's ~/.cache/huggingface/accelerate/default_config.yaml changes nothing.
    config = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "mixed_precision": "no",
              "use_cpu": False, "debug": False, "num_processes": processes, "num_machines": 1}
    (work / "accelerate.json").write_text(json.dumps(config))
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(work / "accelerate.json"),
            "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "workers.distributed", str(job_id), "--work", str(work), "--out", str(out),
            "--adapter", str(adapter), "--bf16", str(int(bf16))]
    return argv + (["--resume", resume] if resume else [])


def _rank_env(processes: int) -> dict[str, str]:
    threads = max(1, (settings.TRAIN_THREADS or len(os.sched_getaffinity(0))) // processes)
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "api.settings", "DATABASE_URL": _database_url(),
            PARENT_PID: str(os.getpid()), "TRAIN_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
            **{name: str(getattr(settings, name)) for name in FORWARDED}}


def _database_url() -> str:
    """The database this process uses (under pytest, the test database rather than DATABASE_URL's)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        if str(db["NAME"]).startswith((":memory:", "file:memorydb")):
            raise DistributedError("an in-memory SQLite database cannot be shared with training processes")
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db.get("USER") or "") + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    options = {k: v for k, v in (db.get("OPTIONS") or {}).items() if isinstance(v, str | int)}
    return (f"postgres://{credentials}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{quote(db['NAME'])}"
            + (f"?{urlencode(options)}" if options else ""))


def _watch(proc: subprocess.Popen[bytes], work: Path, lease_lost: threading.Event) -> None:
    """Wait for the ranks; relay a lost lease and a worker shutdown to rank 0 as flag files."""
    while True:
        try:
            proc.wait(timeout=0.5)
            return
        except subprocess.TimeoutExpired:
            pass
        if lease_lost.is_set():
            (work / LEASE_LOST).touch()
        if worker_shutting_down():
            (work / SHUTDOWN).touch()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- the ranks' side --------------------------------------------------------------------------------------


class _LeaseFlag:
    """The `lease_lost` event of a rank: the worker wrote the flag, or the worker is gone (kill -9)."""

    def __init__(self, work: Path, parent_pid: int):
        self.path, self.parent_pid = work / LEASE_LOST, parent_pid

    def is_set(self) -> bool:
        if self.path.exists():
            return True
        try:
            os.kill(self.parent_pid, 0)
        except ProcessLookupError:
            return True
        return False


class _Rank0Progress(JobProgressCallback):
    def __init__(self, job_id: int, *, tokens_per_example: float, work: Path, parent_pid: int):
        super().__init__(job_id, tokens_per_example=tokens_per_example,
                         lease_lost=_LeaseFlag(work, parent_pid))  # type: ignore[arg-type]
        self.shutdown_flag = work / SHUTDOWN

    def _stop_reason(self) -> str | None:
        return super()._stop_reason() or (StopReason.SHUTDOWN if self.shutdown_flag.exists() else None)


class RankSync(TrainerCallback):
    """Rank 0's progress callback (None on the other ranks), kept in step with every rank: its stop and save
    decisions are broadcast at each step end, and a checkpoint is uploaded once every rank has written it.
    At the start, rank 0 hears from every rank (`on_ranks`: rank, host, pid, device)."""

    def __init__(self, progress: JobProgressCallback | None, on_ranks: Callable[[list[dict[str, Any]]], None]):
        self.progress, self.on_ranks = progress, on_ranks

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        ranks: list[Any] = [None] * args.world_size
        dist.all_gather_object(ranks, {"rank": args.process_index, "host": socket.gethostname(),
                                       "pid": os.getpid(), "device": str(args.device)})
        if self.progress:
            self.on_ranks(ranks)
            self.progress.on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch
        import torch.distributed as dist

        if self.progress:
            self.progress.on_step_end(args, state, control, **kwargs)
        decision = torch.tensor([control.should_training_stop, control.should_save], dtype=torch.int32,
                                device=args.device)
        dist.broadcast(decision, src=0)
        control.should_training_stop, control.should_save = bool(decision[0]), bool(decision[1])

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        dist.barrier()  # every rank's rng_state_<rank>.pth is in the folder
        if self.progress:
            self.progress.on_save(args, state, control, **kwargs)

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress:
            self.progress.on_log(args, state, control, **kwargs)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress:
            self.progress.on_epoch_end(args, state, control, **kwargs)


def rank_train(*, job_id: int, work: Path, out: Path, adapter: Path, resume: str | None, bf16: bool) -> None:
    """One rank's part of the job: build the model and train its shard; rank 0 reports and saves."""
    from api.jobs import services
    from api.jobs.models import Job
    from workers.base_models import base_model_get, tokenizer_load
    from workers.methods.registry import method_get
    from workers.training import engine
    from workers.training.hyperparameters import Hyperparameters

    rank = int(os.environ["RANK"])
    job = Job.objects.get(id=job_id)
    hp, entry, method = Hyperparameters(**job.hyperparameters), base_model_get(job.base_model), method_get(job.method)
    data = json.loads((work / ROWS).read_text())
    tokenizer = tokenizer_load(entry)
    engine.threads_configure()
    model = engine.model_build(entry, method, job.method_config, task=job.task, tokenizer=tokenizer,
                               labels=data["labels"], train_rows=data["train"], hp=hp)
    trainable, total = model.get_nb_trainable_parameters()
    device = engine.device_pick()
    # batch_size is the job's total: each rank takes its share of every batch
    rank_hp = hp.model_copy(update={"batch_size": math.ceil(hp.batch_size / hp.processes)})
    progress = None
    if rank == 0:
        progress = _Rank0Progress(job.id, work=work, parent_pid=int(os.environ[PARENT_PID]),
                                  tokens_per_example=sum(len(r["input_ids"]) for r in data["train"])
                                  / len(data["train"]))

    def ranks_record(ranks: list[dict[str, Any]]) -> None:
        services.job_event_add(
            job_id=job.id, type="training",
            message=f"training {job.method} on {len(data['train'])} examples, {len(ranks)} processes on {device} "
                    f"(batch {rank_hp.batch_size} each)",
            data={"examples": len(data["train"]), "trainable_parameters": trainable, "total_parameters": total,
                  "device": device, "processes": len(ranks), "backend": "nccl" if device == "cuda" else "gloo",
                  "per_process_batch_size": rank_hp.batch_size, "ranks": ranks,
                  "bf16": bf16 and engine.autocast_safe(model)})

    def oom_fail(retry: engine.OomRetry) -> None:  # one rank retrying alone would leave the others waiting
        raise DistributedError(f"rank {rank} ran out of memory ({retry.error}); lower batch_size")

    trainer = engine.trainer_fit(
        model, task=job.task, tokenizer=tokenizer, hp=rank_hp, train_rows=data["train"], eval_rows=data["eval"],
        out=out, device=device, resume=resume, on_oom=oom_fail, callbacks=[RankSync(progress, ranks_record)],
        bf16_measured=bf16)
    if progress is None:
        return
    if not progress.stop_reason:
        method.save(model, str(adapter))
    result = Result(stop_reason=progress.stop_reason, step=trainer.state.global_step,
                    history=trainer.state.log_history, trainable=trainable)
    (work / f"{RESULT}.partial").write_text(json.dumps(result.__dict__))
    os.replace(work / f"{RESULT}.partial", work / RESULT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One rank of a multi-process job (started by the worker).")
    parser.add_argument("job_id", type=int)
    for name in ("--work", "--out", "--adapter"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--resume")
    parser.add_argument("--bf16", type=int, choices=(0, 1), required=True)
    args = parser.parse_args(argv)
    from api.ops.logs import job_id_var

    job_id_var.set(args.job_id)
    rank_train(job_id=args.job_id, work=args.work, out=args.out, adapter=args.adapter, resume=args.resume,
               bf16=bool(args.bf16))
    return 0


if __name__ == "__main__":
    sys.exit(main())
