"""OpenAI's API under /v1: thin views over the datasets, jobs and registry services (see services.py)."""

from collections.abc import Callable
from typing import Any

from django.http import StreamingHttpResponse
from rest_framework import serializers
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.datasets.examples import TASKS
from api.datasets.selectors import dataset_get, dataset_list
from api.jobs.selectors import job_checkpoints, job_get, job_list
from api.jobs.services import job_cancel
from api.openai_compat import services
from api.openai_compat.errors import openai_exception_handler
from api.openai_compat.selectors import adapter_versions_active, job_events_newest_first
from api.registry.selectors import adapter_version_get
from storage import keys, s3
from workers.base_models import catalogue


class OpenAIApi(APIView):
    schema = None  # OpenAI publishes this API's schema; /api/schema/ documents /api/v1 only
    def get_exception_handler(self) -> Callable[..., Response | None]:
        return openai_exception_handler


def _limit(request: Request, default: int = 20, most: int = 100) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise services.OpenAIInputError(f"limit must be an integer from 1 to {most}", "limit")
    return int(raw)


def _page(items: list[Any], limit: int, mapper: Callable[[Any], dict[str, Any]]) -> Response:
    """OpenAI's cursor page: `items` holds up to limit + 1 rows, the extra one only says there are more."""
    data = [mapper(item) for item in items[:limit]]
    return Response({"object": "list", "data": data, "has_more": len(items) > limit,
                     "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


def _job(request: Request, job_id: str) -> Any:
    return job_get(user=request.user, job_id=services.object_id(job_id, "ftjob-"))


class FileListCreateApi(OpenAIApi):
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(help_text="JSONL: chat `messages` or `prompt`/`completion` rows")
        purpose = serializers.CharField()
        task = serializers.ChoiceField(choices=TASKS, default="sft", help_text="not OpenAI's: sft or classification")
        base_model = serializers.CharField(max_length=100, required=False, default="",
                                           help_text="not OpenAI's: the tokenizer for the length stats")

    def get(self, request: Request) -> Response:
        purpose = request.query_params.get("purpose")
        datasets = dataset_list(user=request.user) if purpose in (None, "fine-tune") else dataset_list(
            user=request.user).none()
        if request.query_params.get("order") == "asc":
            datasets = datasets.order_by("id")
        if "after" in request.query_params:
            after = services.object_id(request.query_params["after"], "file-")
            datasets = datasets.filter(id__gt=after) if request.query_params.get("order") == "asc" else datasets.filter(
                id__lt=after)
        limit = _limit(request, 10000, 10000)
        return _page(list(datasets[: limit + 1]), limit, services.file_object)

    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        dataset = services.file_create(user=request.user, upload=upload, filename=upload.name,
                                       purpose=data.validated_data["purpose"], task=data.validated_data["task"],
                                       base_model=data.validated_data["base_model"])
        return Response(services.file_object(dataset))


class FileDetailApi(OpenAIApi):
    def get(self, request: Request, file_id: str) -> Response:
        dataset = dataset_get(user=request.user, dataset_id=services.object_id(file_id, "file-"))
        return Response(services.file_object(dataset))

    def delete(self, request: Request, file_id: str) -> Response:
        dataset = dataset_get(user=request.user, dataset_id=services.object_id(file_id, "file-"))
        return Response(services.file_delete(dataset=dataset))


class FileContentApi(OpenAIApi):
    def get(self, request: Request, file_id: str) -> StreamingHttpResponse:
        dataset = dataset_get(user=request.user, dataset_id=services.object_id(file_id, "file-"))
        return StreamingHttpResponse(s3.iter_object(keys.dataset(dataset.sha256)),
                                     content_type="application/octet-stream")


class FineTuningJobListCreateApi(OpenAIApi):
    parser_classes = [JSONParser]

    class InputSerializer(serializers.Serializer):
        model = serializers.CharField(max_length=100)
        training_file = serializers.CharField()
        validation_file = serializers.CharField(required=False, allow_null=True, default=None)
        suffix = serializers.CharField(max_length=64, required=False, allow_null=True, default=None)
        seed = serializers.IntegerField(required=False, allow_null=True, default=None)
        hyperparameters = serializers.JSONField(required=False, default=None)
        method = serializers.JSONField(required=False, default=None)
        peft = serializers.JSONField(required=False, default=None,
                                     help_text='not OpenAI\'s: {"method": "lora", "config": {...}}')
        priority = serializers.IntegerField(min_value=0, max_value=9, default=5, help_text="not OpenAI's")
        integrations = serializers.JSONField(required=False, default=None)
        metadata = serializers.JSONField(required=False, default=None)

    def get(self, request: Request) -> Response:
        jobs = job_list(user=request.user)
        if "after" in request.query_params:
            jobs = jobs.filter(id__lt=services.object_id(request.query_params["after"], "ftjob-"))
        limit = _limit(request)
        return _page(list(jobs[: limit + 1]), limit, services.job_object)

    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        if fields.pop("integrations"):
            raise services.OpenAIInputError("integrations are not supported here", "integrations")
        fields.pop("metadata")
        job = services.job_from_request(user=request.user, **fields)
        return Response(services.job_object(job_get(user=request.user, job_id=job.id)))


class FineTuningJobDetailApi(OpenAIApi):
    def get(self, request: Request, job_id: str) -> Response:
        return Response(services.job_object(_job(request, job_id)))


class FineTuningJobCancelApi(OpenAIApi):
    def post(self, request: Request, job_id: str) -> Response:
        job = job_cancel(job=_job(request, job_id))
        return Response(services.job_object(job))


class FineTuningJobEventsApi(OpenAIApi):
    def get(self, request: Request, job_id: str) -> Response:
        job = _job(request, job_id)
        before = None
        if "after" in request.query_params:
            before = services.object_id(request.query_params["after"], f"ftevent-{job.id}-")
        limit = _limit(request)
        return _page(list(job_events_newest_first(job=job, before_seq=before)[: limit + 1]), limit,
                     services.event_object)


class FineTuningJobCheckpointsApi(OpenAIApi):
    def get(self, request: Request, job_id: str) -> Response:
        checkpoints = job_checkpoints(job=_job(request, job_id))
        if "after" in request.query_params:
            after = checkpoints.filter(id=services.object_id(request.query_params["after"], "ftckpt-")).first()
            checkpoints = checkpoints.filter(step__lt=after.step) if after else checkpoints.none()
        limit = _limit(request, 10)
        return _page(list(checkpoints[: limit + 1]), limit, services.checkpoint_object)


class ModelListApi(OpenAIApi):
    def get(self, request: Request) -> Response:
        data = [services.base_model_object(entry) for entry in catalogue().values()]
        data += [services.version_object(v) for v in adapter_versions_active(user=request.user)]
        return Response({"object": "list", "data": data})


class ModelDetailApi(OpenAIApi):
    def get(self, request: Request, model: str) -> Response:
        if model in catalogue():
            return Response(services.base_model_object(catalogue()[model]))
        name, _, ref = model.partition("@")
        return Response(services.version_object(adapter_version_get(user=request.user, name=name,
                                                                    ref=ref or "latest")))


class _GenerationInput(serializers.Serializer):
    model = serializers.CharField()
    max_tokens = serializers.IntegerField(required=False, allow_null=True, default=None)
    temperature = serializers.FloatField(required=False, allow_null=True, default=None)
    top_p = serializers.FloatField(required=False, allow_null=True, default=None)
    stop = serializers.JSONField(required=False, default=None)
    seed = serializers.IntegerField(required=False, allow_null=True, default=None)
    n = serializers.IntegerField(min_value=1, max_value=8, required=False, allow_null=True, default=None)
    stream = serializers.BooleanField(required=False, allow_null=True, default=False)
    stream_options = serializers.JSONField(required=False, default=None)


def _completion_response(request: Request, data: dict[str, Any], prompts: list[str], chat: bool) -> Any:
    params = {key: data[key] for key in ("max_tokens", "temperature", "top_p", "stop", "seed")}
    stream = bool(data["stream"])
    result = services.completion_create(
        user=request.user, model=data["model"], prompts=prompts, n=data["n"] or 1, params=params, chat=chat,
        stream=stream, include_usage=bool((data["stream_options"] or {}).get("include_usage")))
    if stream:
        response = StreamingHttpResponse(result, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        return response
    return Response(result)


class ChatCompletionApi(OpenAIApi):
    parser_classes = [JSONParser]

    class InputSerializer(_GenerationInput):
        messages = serializers.JSONField()
        max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, default=None)

    def post(self, request: Request) -> Any:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        values["max_tokens"] = values.pop("max_completion_tokens") or values["max_tokens"]
        return _completion_response(request, values, [services.chat_prompt(values["messages"])], chat=True)


class CompletionApi(OpenAIApi):
    parser_classes = [JSONParser]

    class InputSerializer(_GenerationInput):
        prompt = serializers.JSONField()

    def post(self, request: Request) -> Any:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        return _completion_response(request, values, services.completion_prompts(values["prompt"]), chat=False)
