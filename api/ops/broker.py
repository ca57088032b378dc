"""The Redis the broker uses, for what Celery does not keep: queue depths and worker reports.
Every key carries the broker's global key prefix, so deployments sharing one Redis stay apart."""

import functools

import redis
from django.conf import settings


@functools.cache
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def key(name: str) -> str:
    return f"{settings.CELERY_BROKER_TRANSPORT_OPTIONS['global_keyprefix']}{name}"
