import tempfile
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from api.accounts.scoping import visible_to
from api.datasets.formats import Problem, records_iter
from api.datasets.models import Dataset
from storage import keys, s3

PREVIEW_BYTES = 1024 * 1024


def dataset_list(*, user: AbstractBaseUser) -> QuerySet[Dataset]:
    return Dataset.objects.filter(visible_to(user))


def dataset_get(*, user: AbstractBaseUser, dataset_id: int) -> Dataset:
    """The user's dataset, or 404: another user's id looks exactly like a missing one (staff see all)."""
    return get_object_or_404(Dataset.objects.filter(visible_to(user)), id=dataset_id)


def dataset_preview(*, dataset: Dataset, rows: int = 10) -> list[dict[str, Any]]:
    """The first `rows` records of the stored file, as parsed, read from its first MiB only:
    `{"line": n, "record": {...}}`, or `{"line": n, "problem": "..."}` for a line that does not parse."""
    body = s3.open_object(keys.dataset(dataset.sha256))
    try:
        head = body.read(PREVIEW_BYTES)
    finally:
        body.close()
    if len(head) == PREVIEW_BYTES:  # cut the partial last line
        head = head[: head.rfind(b"\n") + 1]
    preview: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="foundry-preview-") as tmp:
        path = Path(tmp) / "head"
        path.write_bytes(head)
        for line, record in records_iter(path, dataset.format):
            if isinstance(record, Problem):
                preview.append({"line": line, "problem": record.message})
            else:
                preview.append({"line": line, "record": record})
            if len(preview) >= rows:
                break
    return preview
