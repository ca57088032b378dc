"""Django's Redis cache with one connection pool per process.

Django makes a cache object per thread, and under ASGI every request runs in a thread of its own, so the
stock client built a new pool, and opened a new Redis connection, on every request (the rate-limit
counters are read on every API call). The pools here are shared by every cache object of the process."""

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class SharedPoolRedisCacheClient(RedisCacheClient):
    _shared: dict[str, Any] = {}
    _lock = threading.Lock()

    def _get_connection_pool(self, write: bool) -> Any:
        url = self._servers[self._get_connection_pool_index(write)]
        with self._lock:
            if url not in self._shared:
                self._shared[url] = self._pool_class.from_url(url, **self._pool_options)
            return self._shared[url]


class SharedPoolRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = SharedPoolRedisCacheClient
