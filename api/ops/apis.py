"""Staff-only JSON for operators: the live workers with their devices and queues, and queue depths."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.ops.selectors import queue_depths, workers_list


class OpsWorkersApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses=inline_serializer("OpsWorkers", {
        "data": serializers.ListField(child=serializers.DictField(), help_text="one report per live worker: name, "
                                      "host, pid, queues, devices (cpu, cuda), started_at, seen_at, running_jobs"),
        "queues": serializers.DictField(child=serializers.IntegerField(), help_text="messages waiting per queue"),
    }))
    def get(self, request: Request) -> Response:
        return Response({"data": workers_list(), "queues": queue_depths()})
