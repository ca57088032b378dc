"""Logging: one line of JSON per record (LOG_FORMAT=json) or plain text, each tagged with the job it
belongs to. The job id comes from a context variable the train task sets for the job's duration
(workers/tasks.py), from the name of a job's heartbeat thread, or from Celery's "Received task"
record, which is logged before the task starts. No Django imports: settings.py builds LOGGING here."""

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("json", "text")
TRAIN_TASK = "workers.tasks.job_train"
job_id_var: ContextVar[int | None] = ContextVar("foundry_job_id", default=None)
_HEARTBEAT_THREAD = re.compile(r"^heartbeat-(\d+)$")  # workers/training/runner.py names it so
_FIRST_INT = re.compile(r"\d+")


@contextmanager
def job_log_context(job_id: int) -> Iterator[None]:
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


def _job_id_of(record: logging.LogRecord) -> int | None:
    explicit = getattr(record, "job_id", None)
    if explicit is not None:
        return int(explicit)
    current = job_id_var.get()
    if current is not None:
        return current
    thread = _HEARTBEAT_THREAD.match(record.threadName or "")
    if thread:
        return int(thread.group(1))
    data = getattr(record, "data", None)  # Celery's trace records carry {"name", "args", ...}
    if isinstance(data, dict) and data.get("name") == TRAIN_TASK:
        found = _FIRST_INT.search(str(data.get("args", "")))
        return int(found.group()) if found else None
    return None


class JobContextFilter(logging.Filter):
    """Adds `job_id` (int or None) and `job_tag` (" [job N]" or "") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _job_id_of(record)
        record.job_id = job_id
        record.job_tag = f" [job {job_id}]" if job_id is not None else ""
        return True


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", "process", "thread", "job_id"?, "exception"?} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """The LOGGING dict. In json mode uvicorn's own loggers write through the same handler."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT={log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"job": {"()": "api.ops.logs.JobContextFilter"}},
        "formatters": {
            "json": {"()": "api.ops.logs.JsonFormatter"},
            "text": {"format": "%(asctime)s %(levelname)s %(name)s%(job_tag)s: %(message)s"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": log_format, "filters": ["job"]}},
        "root": {"handlers": ["console"], "level": level},
    }
    if log_format == "json":
        config["loggers"] = {name: {"handlers": ["console"], "level": level, "propagate": False}
                             for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}
    return config
