"""OpenAI's objects from this service's rows, and OpenAI's requests onto this service's services.

Ids: a dataset is `file-<id>`, a job `ftjob-<id>`, an event `ftevent-<job>-<seq>`, a checkpoint
`ftckpt-<id>`; a fine-tuned model is `<adapter>@<version>` (any registry ref works where a model is read)."""

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser
from django.http import Http404

from api.datasets.models import Dataset, DatasetStatus
from api.datasets.services import dataset_create, dataset_delete
from api.jobs.models import Job, JobCheckpoint, JobEvent, JobStatus
from api.jobs.services import JobInputError, job_create
from api.registry.models import AdapterVersion
from api.registry.services import adapter_generate
from workers.base_models import BaseModelEntry, catalogue
from workers.training.data import sft_prompt
from workers.training.hyperparameters import Hyperparameters

BASE_LEARNING_RATE: float = Hyperparameters.model_fields["learning_rate"].default
STATUS = {JobStatus.UPLOADING: "running"}  # every other state has OpenAI's name already
FILE_STATUS = {DatasetStatus.VALIDATING: "uploaded", DatasetStatus.READY: "processed", DatasetStatus.INVALID: "error"}
EVENT_LEVEL = {"warning": "warn"}
# This service's parameter names -> the OpenAI request's, so an error points at what the caller sent.
PARAMS = {"base_model": "model", "task": "model", "dataset": "training_file", "validation_dataset": "validation_file",
          "adapter_name": "suffix", "method": "peft.method", "method_config": "peft.config",
          "hyperparameters.epochs": "hyperparameters.n_epochs",
          "hyperparameters.learning_rate": "hyperparameters.learning_rate_multiplier"}
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class OpenAIInputError(ValueError):
    """A request this facade cannot map; `param` names the field (HTTP 400)."""

    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.param = param


def param_map(param: str | None) -> str | None:
    if not param:
        return None
    for ours, theirs in PARAMS.items():
        if param == ours or param.startswith(ours + "."):
            return theirs + param[len(ours):]
    return param


def _ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def object_id(value: Any, prefix: str) -> int:
    """`file-12` -> 12; anything else is a missing object (404)."""
    text = str(value)
    if not text.startswith(prefix) or not text[len(prefix):].isdigit():
        raise Http404(f"no object {text!r}")
    return int(text[len(prefix):])


def _file_id(value: Any, param: str) -> int:
    try:
        return object_id(value, "file-")
    except Http404:
        raise OpenAIInputError(f"no file {value!r}", param) from None


# files

def file_object(dataset: Dataset) -> dict[str, Any]:
    report = dataset.report or {}
    details = None
    if dataset.status == DatasetStatus.INVALID:
        first = (report.get("errors") or [{}])[0]
        details = f"{report.get('error_count', 0)} problems; first: line {first.get('line')}: {first.get('message')}"
    return {"id": f"file-{dataset.id}", "object": "file", "bytes": dataset.size_bytes,
            "created_at": _ts(dataset.created_at), "filename": dataset.filename, "purpose": "fine-tune",
            "status": FILE_STATUS[DatasetStatus(dataset.status)], "status_details": details, "expires_at": None}


def file_create(*, user: AbstractBaseUser, upload: IO[bytes], filename: str, purpose: str, task: str,
                base_model: str) -> Dataset:
    if purpose != "fine-tune":
        raise OpenAIInputError(f"purpose {purpose!r} is not supported here; use 'fine-tune'", "purpose")
    return dataset_create(user=user, upload=upload, filename=filename, task=task, base_model=base_model)


def file_delete(*, dataset: Dataset) -> dict[str, Any]:
    """OpenAI's file delete: the dataset's own rule (api/datasets/services.py), in OpenAI's shape."""
    dataset_delete(dataset=dataset)
    return {"id": f"file-{dataset.id}", "object": "file", "deleted": True}


# fine-tuning jobs

def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def job_hyperparameters(job: Job) -> dict[str, Any]:
    hp = job.hyperparameters
    return {"n_epochs": _number(hp["epochs"]), "batch_size": hp["batch_size"],
            "learning_rate_multiplier": _number(round(hp["learning_rate"] / BASE_LEARNING_RATE, 10))}


def job_object(job: Job) -> dict[str, Any]:
    version = getattr(job, "result_version", None)
    running = job.status in (JobStatus.RUNNING, JobStatus.UPLOADING)
    hyperparameters = job_hyperparameters(job)
    return {
        "id": f"ftjob-{job.id}", "object": "fine_tuning.job", "created_at": _ts(job.created_at),
        "error": {"code": job.error_code, "message": job.error_message, "param": param_map(job.error_param)}
        if job.status == JobStatus.FAILED else None,
        "fine_tuned_model": f"{version.adapter.name}@{version.version}" if version else None,
        "finished_at": _ts(job.finished_at), "hyperparameters": hyperparameters, "model": job.base_model,
        "organization_id": f"user-{job.owner_id}", "result_files": [], "seed": job.hyperparameters.get("seed", 0),
        "status": STATUS.get(JobStatus(job.status), job.status), "trained_tokens": None,
        "training_file": f"file-{job.dataset_id}",
        "validation_file": f"file-{job.validation_dataset_id}" if job.validation_dataset_id else None,
        "estimated_finish": int(time.time()) + job.eta_seconds if running and job.eta_seconds else None,
        "integrations": [], "metadata": None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "user_provided_suffix": job.adapter_name,
        # Not OpenAI's: the PEFT method, resolved, and where the job is.
        "peft": {"method": job.method, "config": job.method_config},
        "progress": {"step": job.step, "total_steps": job.total_steps, "epoch": job.epoch},
    }


def _hyperparameters(raw: Any, param: str) -> dict[str, Any]:
    """OpenAI's names onto ours; "auto" keeps our default. Other keys pass through (max_seq_length, ...)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise OpenAIInputError("hyperparameters must be an object", param)
    ours: dict[str, Any] = {}
    for key, value in raw.items():
        if value == "auto":
            continue
        if key == "n_epochs":
            ours["epochs"] = value
        elif key == "learning_rate_multiplier":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise OpenAIInputError("learning_rate_multiplier must be a number or 'auto'",
                                       f"{param}.learning_rate_multiplier")
            ours["learning_rate"] = value * BASE_LEARNING_RATE
        else:
            ours[key] = value
    return ours


def _method(method: Any) -> dict[str, Any]:
    if method is None:
        return {}
    if not isinstance(method, dict) or method.get("type") != "supervised":
        raise OpenAIInputError("only method type 'supervised' is supported here", "method.type")
    return _hyperparameters((method.get("supervised") or {}).get("hyperparameters"),
                            "method.supervised.hyperparameters")


def job_from_request(*, user: AbstractBaseUser, model: str, training_file: str, validation_file: str | None,
                     suffix: str | None, seed: int | None, hyperparameters: Any, method: Any, peft: Any,
                     priority: int) -> Job:
    """Map a `fine_tuning.jobs.create` onto job_create: the task is the training file's, the adapter is named
    by `suffix` (default `<model>-ft`), PEFT method and config come from the extra `peft` field."""
    training = Dataset.objects.filter(id=_file_id(training_file, "training_file"), owner=user).first()
    if training is None:
        raise OpenAIInputError(f"no file {training_file!r}", "training_file")
    if peft is not None and not isinstance(peft, dict):
        raise OpenAIInputError("peft must be an object {\"method\": ..., \"config\": {...}}", "peft")
    peft = peft or {}
    hp = {**_hyperparameters(hyperparameters, "hyperparameters"), **_method(method)}
    if seed is not None:
        hp["seed"] = seed
    validation = _file_id(validation_file, "validation_file") if validation_file else None
    try:
        return job_create(user=user, base_model=model, task=training.task, dataset=training.id,
                          validation_dataset=validation, method=peft.get("method", "lora"),
                          method_config=peft.get("config"), hyperparameters=hp,
                          adapter_name=suffix or f"{model}-ft", priority=priority)
    except JobInputError as exc:
        raise OpenAIInputError(str(exc), param_map(exc.param)) from None


def event_object(event: JobEvent) -> dict[str, Any]:
    return {"id": f"ftevent-{event.job_id}-{event.seq}", "object": "fine_tuning.job.event",
            "created_at": _ts(event.created_at), "level": EVENT_LEVEL.get(event.level, event.level),
            "message": event.message, "data": {"event": event.type, **event.data}, "type": "message"}


def checkpoint_object(checkpoint: JobCheckpoint) -> dict[str, Any]:
    metrics = {"step": checkpoint.step}
    if "loss" in checkpoint.metrics:
        metrics["train_loss"] = checkpoint.metrics["loss"]
    if "eval_loss" in checkpoint.metrics:
        metrics["valid_loss"] = checkpoint.metrics["eval_loss"]
    return {"id": f"ftckpt-{checkpoint.id}", "object": "fine_tuning.job.checkpoint",
            "created_at": _ts(checkpoint.created_at),
            "fine_tuned_model_checkpoint": f"ftjob-{checkpoint.job_id}:step-{checkpoint.step}",
            "fine_tuning_job_id": f"ftjob-{checkpoint.job_id}", "metrics": metrics, "step_number": checkpoint.step}


# models

def base_model_object(entry: BaseModelEntry) -> dict[str, Any]:
    return {"id": entry.id, "object": "model", "created": 0, "owned_by": "system", "tasks": list(entry.tasks)}


def version_object(version: AdapterVersion) -> dict[str, Any]:
    return {"id": f"{version.adapter.name}@{version.version}", "object": "model",
            "created": _ts(version.created_at), "owned_by": f"user-{version.adapter.owner_id}",
            "parent": version.metadata.get("base_model", {}).get("id"), "task": version.metadata.get("task")}


# completions

def _content(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of parts of which only text parts are accepted."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise OpenAIInputError("content must be a string or a list of text parts", where)


def chat_prompt(messages: Any) -> str:
    """The chat in the format the adapter was trained on (workers.training.data.sft_prompt), up to the
    assistant's turn."""
    if not isinstance(messages, list) or not messages:
        raise OpenAIInputError("messages must be a non-empty list", "messages")
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in CHAT_ROLES:
            raise OpenAIInputError(f"role {role!r} is not supported; use one of {sorted(CHAT_ROLES)}",
                                   f"messages[{i}].role")
        turns.append((CHAT_ROLES[role], _content(message.get("content"), f"messages[{i}].content")))
    return sft_prompt(turns)


def completion_prompts(prompt: Any) -> list[str]:
    """`prompt` (a string or a list of them) as the user turn of the format prompt/completion rows train on."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise OpenAIInputError("prompt must be a non-empty string or a list of them (token ids are not supported)",
                               "prompt")
    return [sft_prompt([("user", p)]) for p in prompts]


def _usage(outputs: list[dict[str, Any]], prompts: int) -> dict[str, int]:
    prompt_tokens = sum(o["prompt_tokens"] for o in outputs[:: max(1, len(outputs) // prompts)])
    completion_tokens = sum(o["completion_tokens"] for o in outputs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_create(*, user: AbstractBaseUser, model: str, prompts: list[str], n: int, params: dict[str, Any],
                      chat: bool, stream: bool, include_usage: bool = False) -> dict[str, Any] | Iterator[str]:
    """Generate `n` choices per prompt; a chat.completion / text_completion object, or its SSE lines."""
    if not isinstance(model, str) or not model or model in catalogue():
        raise OpenAIInputError(f"model {model!r}: name a fine-tuned sft adapter, `<adapter>@<version or alias>`; "
                               "base models do not serve completions here", "model")
    result = adapter_generate(user=user, adapter=model, prompts=[p for p in prompts for _ in range(n)],
                              params=params, stream=stream)
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": f"{result['adapter']}@{result['version']}"}
    if stream:
        return _sse(head, result["events"], chat=chat, prompts=len(prompts), include_usage=include_usage)
    outputs = result["outputs"]
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": o["text"], "refusal": None},
                    "finish_reason": o["finish_reason"], "logprobs": None} for i, o in enumerate(outputs)]
    else:
        choices = [{"index": i, "text": o["text"], "finish_reason": o["finish_reason"], "logprobs": None}
                   for i, o in enumerate(outputs)]
    return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
            "usage": _usage(outputs, len(prompts)), "system_fingerprint": None}


def _sse(head: dict[str, Any], events: Iterator[dict[str, Any]], *, chat: bool, prompts: int,
         include_usage: bool) -> Iterator[str]:
    """Server-sent events as OpenAI sends them: one chunk per delta, a last chunk per choice with its
    finish_reason, optionally a usage chunk, then `[DONE]`."""
    import json

    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**head, 'object': kind, 'choices': choices, **extra})}\n\n"

    finished: list[dict[str, Any]] = []
    started: set[int] = set()
    for event in events:
        if "error" in event:
            yield f"data: {json.dumps({'error': {'message': event['error'], 'type': 'server_error'}})}\n\n"
            return
        index = event["index"]
        if chat and index not in started:
            started.add(index)
            yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        if "delta" in event:
            body = {"content": event["delta"]} if chat else None
            yield chunk([{"index": index, "finish_reason": None, "logprobs": None,
                          **({"delta": body} if chat else {"text": event["delta"]})}])
        else:
            finished.append(event)
            yield chunk([{"index": index, "finish_reason": event["finish_reason"], "logprobs": None,
                          **({"delta": {}} if chat else {"text": ""})}])
    if include_usage:
        yield chunk([], usage=_usage(sorted(finished, key=lambda e: e["index"]), prompts))
    yield "data: [DONE]\n\n"
