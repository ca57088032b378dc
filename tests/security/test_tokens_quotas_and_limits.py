import io
import threading
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.throttling import UserRateThrottle

from api.accounts.models import ApiToken
from api.accounts.services import token_create
from api.datasets.models import Dataset
from api.jobs.models import Job
from tests.conftest import SENTIMENT, jsonl, upload


def _ready_dataset(client: APIClient) -> Dataset:
    return Dataset.objects.create(owner=client.user, name="d", task="classification", format="jsonl",  # type: ignore[attr-defined]
                                  filename="d.jsonl", sha256="0" * 64, size_bytes=10, base_model="tiny-bert",
                                  status="ready", rows=2)


def test_expired_and_revoked_tokens_are_refused(alice: APIClient) -> None:
    token = token_create(user=alice.user, name="short", expires_in_days=1)  # type: ignore[attr-defined]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/jobs").status_code == 200
    ApiToken.objects.filter(name="short").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/v1/jobs").status_code == 401
    ApiToken.objects.filter(name="short").delete()  # revocation deletes the row
    assert client.get("/api/v1/jobs").status_code == 401


def test_token_use_is_written_once_a_minute_not_on_every_request(alice: APIClient) -> None:
    row = ApiToken.objects.get(user=alice.user)  # type: ignore[attr-defined]
    assert alice.get("/api/v1/jobs").status_code == 200
    first = ApiToken.objects.get(id=row.id).last_used_at
    assert first is not None
    assert alice.get("/api/v1/jobs").status_code == 200
    assert ApiToken.objects.get(id=row.id).last_used_at == first  # no write on the polling path
    ApiToken.objects.filter(id=row.id).update(last_used_at=first - timedelta(minutes=2))
    assert alice.get("/api/v1/jobs").status_code == 200
    assert ApiToken.objects.get(id=row.id).last_used_at > first


def test_50_concurrent_submissions_against_a_quota_of_2_create_exactly_2(transactional_db: None, bucket: None) -> None:
    from tests.conftest import make_client

    alice = make_client("alice")
    dataset = _ready_dataset(alice)
    statuses: list[int] = []
    barrier = threading.Barrier(50)

    def submit(i: int) -> None:
        try:
            barrier.wait()
            response = alice.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification",
                                                   "dataset": dataset.id, "adapter_name": f"q{i}"}, format="json")
            statuses.append(response.status_code)
        finally:
            connection.close()

    with override_settings(MAX_ACTIVE_JOBS_PER_USER=2):
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert sorted(statuses) == [201, 201] + [429] * 48
    assert Job.objects.filter(owner=alice.user).count() == 2  # type: ignore[attr-defined]


def test_storage_quota_refuses_the_upload_that_would_cross_it(alice: APIClient) -> None:
    content = jsonl(SENTIMENT)
    with override_settings(STORAGE_QUOTA_BYTES=len(content) + 10):
        assert upload(alice, content).status_code == 201
        second = upload(alice, content, filename="again.jsonl")
    assert second.status_code == 429
    assert second.data["error"]["code"] == "quota_exceeded" and second.data["error"]["param"] == "file"
    assert Dataset.objects.count() == 1


def test_requests_per_token_are_rate_limited(alice: APIClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/min"})
    cache.clear()
    codes = [alice.get("/api/v1/jobs").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    cache.clear()


class _Endless(io.RawIOBase):
    """A file of `size` bytes of 'x' that never exists in memory at once."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.left)
        buffer[:n] = b"x" * n
        self.left -= n
        return n


def test_a_200_mb_line_is_reported_in_bounded_memory() -> None:
    import tracemalloc

    from api.datasets.formats import _raw_lines

    tracemalloc.start()
    lines = list(_raw_lines(io.BufferedReader(_Endless(200 * 1024 * 1024)), 1024 * 1024))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert lines == [None]
    assert peak < 16 * 1024 * 1024
