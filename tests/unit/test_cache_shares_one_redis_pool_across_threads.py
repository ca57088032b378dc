"""Under ASGI each request runs in a thread of its own; the rate-limit cache must not open a Redis connection
per request (bench/api_load.py found it doing so)."""

import threading
from typing import Any

from django.core.cache import caches


def _pool_in_a_new_thread() -> Any:
    found = []
    thread = threading.Thread(target=lambda: found.append(caches["default"]._cache._get_connection_pool(True)))
    thread.start()
    thread.join()
    return found[0]


def test_cache_objects_of_different_threads_share_one_connection_pool() -> None:
    first, second = _pool_in_a_new_thread(), _pool_in_a_new_thread()
    assert first is second
    caches["default"].set("pool-check", 1, 5)
    assert caches["default"].get("pool-check") == 1
