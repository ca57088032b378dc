"""Deployment-wide read-only endpoints: health and the catalogues of base models and methods."""

from typing import Any

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from storage import s3
from workers.base_models import catalogue
from workers.methods.registry import METHODS


def _check(fn: Any) -> dict[str, Any]:
    try:
        fn()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker() -> None:
    import redis

    redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()


class HealthApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(responses=inline_serializer("Health", {"ok": serializers.BooleanField(),
                                                          "checks": serializers.DictField()}))
    def get(self, request: Request) -> Response:
        checks = {"database": _check(_database), "broker": _check(_broker), "storage": _check(s3.ping)}
        ok = all(c["ok"] for c in checks.values())
        return Response({"ok": ok, "checks": checks}, status=200 if ok else 503)


class BaseModelListApi(APIView):
    @extend_schema(responses=inline_serializer("BaseModels", {"data": serializers.ListField()}))
    def get(self, request: Request) -> Response:
        return Response({"data": [entry.as_dict() for entry in catalogue().values()]})


class MethodListApi(APIView):
    @extend_schema(responses=inline_serializer("Methods", {"data": serializers.ListField()}))
    def get(self, request: Request) -> Response:
        return Response({"data": [method.as_dict() for method in METHODS.values()]})
