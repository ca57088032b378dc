import hashlib
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from api.accounts.quotas import storage_quota_check, user_lock
from api.datasets.examples import TASKS, examples_iter
from api.datasets.formats import Problem, format_detect
from api.datasets.models import Dataset, DatasetStatus
from api.uploads import PayloadTooLarge
from storage import keys, s3
from workers.base_models import base_model_get, tokenizer_load
from workers.training.data import encode_all

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class DatasetInUse(Exception):
    """The dataset cannot go: a job's lineage refers to it (HTTP 409)."""


def dataset_delete(*, dataset: Dataset) -> None:
    """Delete the row, unless a job used it (its lineage must stay readable); the storage it counted
    against the owner's quota is free again. The content-addressed object in S3 stays: another upload of
    the same bytes may share it."""
    from api.jobs.models import Job

    with transaction.atomic():
        user_lock(user=dataset.owner)
        jobs = list(Job.objects.filter(Q(dataset=dataset) | Q(validation_dataset=dataset))
                    .values_list("id", flat=True)[:5])
        if jobs:
            raise DatasetInUse(f"dataset {dataset.id} is used by job(s) {jobs} and cannot be deleted")
        dataset.delete()


def _spool(upload: IO[bytes], directory: Path) -> tuple[Path, str, int]:
    """Copy an upload to a local file, hashing as it goes; refuse it past DATASET_MAX_BYTES."""
    digest, size = hashlib.sha256(), 0
    path = directory / "upload"
    with open(path, "wb") as out:
        for chunk in iter(lambda: upload.read(1024 * 1024), b""):
            size += len(chunk)
            if size > settings.DATASET_MAX_BYTES:
                raise PayloadTooLarge(f"file is larger than the limit of {settings.DATASET_MAX_BYTES} bytes", "file")
            digest.update(chunk)
            out.write(chunk)
    if size == 0:
        raise DatasetError("file is empty", "file")
    return path, digest.hexdigest(), size


def dataset_create(
    *, user: AbstractBaseUser, upload: IO[bytes], filename: str, task: str, name: str = "", base_model: str = ""
) -> Dataset:
    """Store the file content-addressed in S3 and queue its validation."""
    from workers.tasks import dataset_validate_task

    if task not in TASKS:
        raise DatasetError(f"unknown task {task!r}; use one of {list(TASKS)}", "task")
    try:
        fmt = format_detect(filename)
    except ValueError as exc:
        raise DatasetError(str(exc), "file") from None
    base_model = base_model or settings.DEFAULT_BASE_MODEL
    try:
        base_model_get(base_model)
    except LookupError as exc:
        raise DatasetError(str(exc), "base_model") from None
    with tempfile.TemporaryDirectory(prefix="foundry-upload-") as tmp:
        path, sha256, size = _spool(upload, Path(tmp))
        if not s3.exists(keys.dataset(sha256)):
            s3.put_file(keys.dataset(sha256), path, sha256=sha256)
    with transaction.atomic():
        user_lock(user=user)
        storage_quota_check(user=user, adding=size, param="file")
        dataset = Dataset.objects.create(
            owner=user, name=name or Path(filename).name, task=task, format=fmt, filename=Path(filename).name,
            sha256=sha256, size_bytes=size, base_model=base_model,
        )
        transaction.on_commit(lambda: dataset_validate_task.delay(dataset.id))
    return dataset


def _percentiles(lengths: list[int]) -> dict[str, int]:
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def pick(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.5), "p90": pick(0.9), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


def _histogram(lengths: list[int], bins: int = 20) -> dict[str, list[int]]:
    """Counts of rows per token-length bin: `edges` has one more entry than `counts`; bin i holds lengths
    in [edges[i], edges[i+1]) and the last bin also holds the maximum."""
    low, high = min(lengths), max(lengths)
    width = max(1, -(-(high - low + 1) // bins))  # ceil: whole tokens per bin
    counts = [0] * min(bins, -(-(high - low + 1) // width))
    for n in lengths:
        counts[min((n - low) // width, len(counts) - 1)] += 1
    return {"edges": [low + i * width for i in range(len(counts))] + [high + 1], "counts": counts}


def dataset_report_build(path: Path, fmt: str, task: str, base_model: str, *, filename: str = "") -> dict[str, Any]:
    """Read the whole file once, in bounded memory: every problem with its line and field (the first
    DATASET_MAX_REPORTED_ERRORS kept), and stats of the good rows (token lengths counted a chunk at a time)."""
    limit = settings.DATASET_MAX_REPORTED_ERRORS
    problems: list[Problem] = []
    problem_count, bad_lines, rows = 0, set(), 0
    labels: Counter[str] = Counter()
    lengths: list[int] = []
    words: list[int] = []  # token-classification: words per row, before sub-word tokenisation
    chunk: list[Any] = []
    tokenizer = tokenizer_load(base_model_get(base_model))

    def measure() -> None:
        lengths.extend(len(r["input_ids"]) for r in encode_all(tokenizer, task, chunk, max_length=1_000_000))
        chunk.clear()

    def report(problem: Problem) -> None:
        nonlocal problem_count
        problem_count += 1
        bad_lines.add(problem.line)
        if len(problems) < limit:
            problems.append(problem)

    for line, item in examples_iter(path, fmt, task, max_line_bytes=settings.DATASET_MAX_LINE_BYTES):
        if isinstance(item, list):
            for problem in item:
                report(problem)
            continue
        rows += 1
        if rows > settings.DATASET_MAX_ROWS:
            report(Problem(line, None, f"more than {settings.DATASET_MAX_ROWS} rows (DATASET_MAX_ROWS)"))
            break
        if task == "classification":
            labels[item.label] += 1
        elif task == "token-classification":
            labels.update(item.tags)
            words.append(len(item.tokens))
        chunk.append(item)
        if len(chunk) >= 1000:
            measure()
    measure()
    stats: dict[str, Any] = {"rows": min(rows, settings.DATASET_MAX_ROWS), "invalid_rows": len(bad_lines - {None})}
    if task in ("classification", "token-classification"):
        stats["label_counts"] = dict(sorted(labels.items()))
        if rows and len(labels) < 2:
            field = "label" if task == "classification" else "labels"
            report(Problem(None, field, f"only one label ({next(iter(labels))!r}); need at least two"))
    if not rows and not problem_count:
        report(Problem(None, None, "the file has no rows"))
    if words:
        stats["words_per_row"] = _percentiles(words)
    if lengths:
        stats["token_lengths"] = {"tokenizer": base_model, **_percentiles(lengths)}
        stats["token_length_histogram"] = _histogram(lengths)
    return {
        "file": filename,
        "errors": [p.as_dict() for p in problems],
        "error_count": problem_count,
        "errors_truncated": problem_count > len(problems),
        "stats": stats,
    }


def dataset_validate(*, dataset_id: int) -> Dataset:
    """Validate a stored dataset; `ready` or `invalid`, then release jobs that waited for it."""
    from api.jobs.services import jobs_release_for_dataset

    dataset = Dataset.objects.get(id=dataset_id)
    if dataset.status != DatasetStatus.VALIDATING:
        return dataset
    with tempfile.TemporaryDirectory(prefix="foundry-validate-") as tmp:
        path = Path(tmp) / "data"
        s3.download_file(keys.dataset(dataset.sha256), path, sha256=dataset.sha256)
        try:
            report = dataset_report_build(path, dataset.format, dataset.task, dataset.base_model,
                                          filename=dataset.filename)
        except Exception as exc:  # a bug or a broken tokenizer: say so instead of validating forever
            log.exception("validation of dataset %s crashed", dataset_id)
            report = {"errors": [{"line": None, "field": None, "message": f"validation crashed: {exc}"}],
                      "error_count": 1, "errors_truncated": False, "stats": {"rows": 0}, "system_error": True}
    status = DatasetStatus.INVALID if report["error_count"] else DatasetStatus.READY
    Dataset.objects.filter(id=dataset.id, status=DatasetStatus.VALIDATING).update(
        status=status, rows=report["stats"]["rows"], report=report, validated_at=timezone.now()
    )
    dataset.refresh_from_db()
    jobs_release_for_dataset(dataset=dataset)
    return dataset
