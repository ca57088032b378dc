import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from api.accounts.services import token_create


@pytest.fixture(scope="session")
def bucket() -> None:
    from storage import s3

    s3.bucket_ensure()


@pytest.fixture(scope="module")
def inference_url() -> Iterator[str]:
    """The inference server (workers/inference/server.py) in a thread, per test module (its adapter cache
    starts empty with each module's fresh database)."""
    import uvicorn

    from storage.embedded import free_port, port_open
    from workers.inference.server import app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: port_open(port), bool, timeout=30)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def celery_worker_thread(bucket: None) -> Iterator[Any]:
    """A real Celery worker (solo pool, in a thread) on the real Redis, per test module
    (module-scoped so that tests/chaos/, which runs worker processes, has the queues to itself)."""
    from celery.contrib.testing.worker import start_worker

    from api.celery import app

    with app.connection_for_write() as conn:
        for queue in ("default", "train"):
            conn.default_channel.queue_purge(queue)
    with start_worker(app, pool="solo", concurrency=1, queues=["default", "train"], perform_ping_check=False,
                      shutdown_timeout=60, loglevel="WARNING") as worker:
        yield worker


@pytest.fixture
def worker(celery_worker_thread: Any, transactional_db: None) -> Any:
    """Tests that go through the worker need committed rows: they run without a wrapping transaction."""
    return celery_worker_thread


def make_client(username: str) -> APIClient:
    user = get_user_model().objects.create_user(username=username)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_create(user=user)}")
    client.user = user  # type: ignore[attr-defined]
    return client


@pytest.fixture
def alice(db: None, bucket: None) -> APIClient:
    return make_client("alice")


@pytest.fixture
def bob(db: None) -> APIClient:
    return make_client("bob")


def jsonl(rows: list[Any]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def upload(client: APIClient, content: bytes, filename: str = "data.jsonl", task: str = "classification",
           **extra: str) -> Any:
    file = io.BytesIO(content)
    file.name = filename
    return client.post("/api/v1/datasets", {"file": file, "task": task, **extra}, format="multipart")


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s; last value: {value}")
        time.sleep(0.2)


def dataset_ready(client: APIClient, content: bytes, **kwargs: Any) -> dict[str, Any]:
    created = upload(client, content, **kwargs)
    assert created.status_code == 201, created.content
    return wait_for(lambda: client.get(f"/api/v1/datasets/{created.data['id']}").data,
                    lambda d: d["status"] != "validating")


def job_final(client: APIClient, job_id: int, timeout: float = 300) -> dict[str, Any]:
    return wait_for(lambda: client.get(f"/api/v1/jobs/{job_id}").data,
                    lambda j: j["status"] in {"succeeded", "failed", "cancelled"}, timeout)


SENTIMENT = [{"text": f"{w} movie number {i}", "label": lab} for i in range(20)
             for w, lab in (("great", "pos"), ("awful", "neg"))]
