from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.pagination import paginated_response
from api.registry.models import Adapter, AdapterAlias, AdapterMerge, AdapterVersion, AliasMove
from api.registry.selectors import (
    adapter_alias_list,
    adapter_detail_get,
    adapter_get,
    adapter_list,
    adapter_merge_get,
    adapter_merge_list,
    adapter_version_compare,
    adapter_version_file_urls,
    adapter_version_get,
    adapter_version_list,
    alias_move_list,
)
from api.registry.services import (
    LORA_COMBINATIONS,
    MERGE_MAX_SOURCES,
    adapter_alias_drop,
    adapter_alias_move,
    adapter_merge_create,
    adapter_predict,
    adapter_upload_max_bytes,
    adapter_version_archive,
    adapter_version_tags_set,
    adapter_version_upload,
    adapter_version_zip_stream,
)
from api.schema import page_parameters, paginated
from api.uploads import upload_size_check


class AdapterVersionSerializer(serializers.ModelSerializer):
    adapter = serializers.CharField(source="adapter.name")
    tags = serializers.SlugRelatedField(many=True, read_only=True, slug_field="name")
    aliases = serializers.SlugRelatedField(many=True, read_only=True, slug_field="name")
    archived = serializers.SerializerMethodField()

    class Meta:
        model = AdapterVersion
        fields = ["adapter", "version", "job", "files", "metadata", "tags", "aliases", "archived", "archived_at",
                  "created_at"]

    def get_archived(self, version: AdapterVersion) -> bool:
        return version.archived_at is not None


class AdapterSerializer(serializers.ModelSerializer):
    version_count = serializers.IntegerField(read_only=True)
    latest_version = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = Adapter
        fields = ["name", "version_count", "latest_version", "created_at"]


class AdapterDetailSerializer(AdapterSerializer):
    versions = AdapterVersionSerializer(many=True, read_only=True)

    class Meta(AdapterSerializer.Meta):
        fields = [*AdapterSerializer.Meta.fields, "versions"]


class AdapterListApi(APIView):
    @extend_schema(operation_id="adapters_list", responses=paginated(AdapterSerializer), parameters=page_parameters())
    def get(self, request: Request) -> Response:
        return paginated_response(queryset=adapter_list(user=request.user), serializer_class=AdapterSerializer,
                                  request=request, view=self)


class AdapterDetailApi(APIView):
    @extend_schema(responses=AdapterDetailSerializer)
    def get(self, request: Request, name: str) -> Response:
        return Response(AdapterDetailSerializer(adapter_detail_get(user=request.user, name=name)).data)


class AdapterVersionListCreateApi(APIView):
    parser_classes = [MultiPartParser]

    class FilterSerializer(serializers.Serializer):
        tag = serializers.CharField(max_length=64, required=False)
        archived = serializers.ChoiceField(choices=["false", "true", "all"], default="false",
                                           help_text="false: active versions (default); true: archived only; all")

    class UploadSerializer(serializers.Serializer):
        files = serializers.ListField(child=serializers.FileField(), allow_empty=False,
                                      help_text="adapter_config.json, adapter_model.safetensors, optional README.md")
        base_model = serializers.CharField(max_length=100, help_text="a catalogue id (GET /base-models)")
        labels = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=10000,
                                       help_text="classification: label names in output order "
                                                 "(default LABEL_0..n from the head's shape)")

    @extend_schema(operation_id="adapter_versions_list", parameters=[FilterSerializer, *page_parameters()],
                   responses=paginated(AdapterVersionSerializer))
    def get(self, request: Request, name: str) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        archived = {"false": False, "true": True, "all": None}[filters.validated_data["archived"]]
        versions = adapter_version_list(user=request.user, name=name,
                                        filters={"tag": filters.validated_data.get("tag"), "archived": archived})
        return paginated_response(queryset=versions, serializer_class=AdapterVersionSerializer, request=request,
                                  view=self)

    @extend_schema(request={"multipart/form-data": UploadSerializer}, responses={201: AdapterVersionSerializer})
    def post(self, request: Request, name: str) -> Response:
        upload_size_check(request, limit=adapter_upload_max_bytes(), param="files")
        data = self.UploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = adapter_version_upload(user=request.user, name=name, base_model=data.validated_data["base_model"],
                                         files=data.validated_data["files"],
                                         labels=data.validated_data.get("labels"))
        return Response(AdapterVersionSerializer(version).data, status=status.HTTP_201_CREATED)


class AdapterVersionDetailApi(APIView):
    @extend_schema(responses=AdapterVersionSerializer)
    def get(self, request: Request, name: str, ref: str) -> Response:
        return Response(AdapterVersionSerializer(adapter_version_get(user=request.user, name=name, ref=ref)).data)


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Under ASGI, Django would drain a sync iterator into a list first; pull one chunk at a time instead."""
    while (chunk := await sync_to_async(next, thread_sensitive=False)(chunks, None)) is not None:  # type: ignore[call-arg]
        yield chunk


class AdapterVersionDownloadApi(APIView):
    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    def get(self, request: Request, name: str, ref: str) -> StreamingHttpResponse:
        version = adapter_version_get(user=request.user, name=name, ref=ref)
        chunks = adapter_version_zip_stream(version=version)
        body = _async_chunks(chunks) if isinstance(request._request, ASGIRequest) else chunks
        response = StreamingHttpResponse(body, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{name}-v{version.version}.zip"'
        return response


class AdapterVersionFilesApi(APIView):
    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        size = serializers.IntegerField()
        sha256 = serializers.CharField()
        url = serializers.URLField()

    @extend_schema(responses=inline_serializer("AdapterVersionFileUrls", {
        "version": serializers.IntegerField(), "expires_in": serializers.IntegerField(),
        "files": OutputSerializer(many=True)}))
    def get(self, request: Request, name: str, ref: str) -> Response:
        version = adapter_version_get(user=request.user, name=name, ref=ref)
        seconds = settings.REGISTRY_PRESIGN_SECONDS
        files = adapter_version_file_urls(version=version, seconds=seconds)
        return Response({"version": version.version, "expires_in": seconds,
                         "files": self.OutputSerializer(files, many=True).data})


class AdapterVersionTagsApi(APIView):
    class InputSerializer(serializers.Serializer):
        tags = serializers.ListField(child=serializers.CharField(max_length=200, allow_blank=True), max_length=1000)

    @extend_schema(request=InputSerializer, responses=AdapterVersionSerializer)
    def put(self, request: Request, name: str, ref: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = adapter_version_get(user=request.user, name=name, ref=ref)
        adapter_version_tags_set(version=version, tags=data.validated_data["tags"])
        return Response(AdapterVersionSerializer(adapter_version_get(user=request.user, name=name,
                                                                     ref=str(version.version))).data)


class AdapterVersionArchiveApi(APIView):
    @extend_schema(request=None, responses=AdapterVersionSerializer)
    def post(self, request: Request, name: str, ref: str) -> Response:
        version = adapter_version_archive(version=adapter_version_get(user=request.user, name=name, ref=ref))
        return Response(AdapterVersionSerializer(version).data)


class AliasSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.version")

    class Meta:
        model = AdapterAlias
        fields = ["name", "version", "updated_at"]


class AliasMoveSerializer(serializers.ModelSerializer):
    user = serializers.SlugRelatedField(read_only=True, slug_field="username")

    class Meta:
        model = AliasMove
        fields = ["alias", "from_version", "to_version", "user", "created_at"]


class AdapterAliasListApi(APIView):
    class OutputSerializer(serializers.Serializer):
        aliases = AliasSerializer(many=True)
        history = AliasMoveSerializer(many=True, help_text="every move, creation (from_version null) and drop "
                                                             "(to_version null), newest first")

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, name: str) -> Response:
        return Response(self.OutputSerializer({"aliases": adapter_alias_list(user=request.user, name=name),
                                               "history": alias_move_list(user=request.user, name=name)}).data)


class AdapterAliasApi(APIView):
    class InputSerializer(serializers.Serializer):
        version = serializers.IntegerField(min_value=1)

    @extend_schema(request=InputSerializer, responses=AliasSerializer)
    def put(self, request: Request, name: str, alias: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        moved = adapter_alias_move(user=request.user, adapter=adapter_get(user=request.user, name=name), alias=alias,
                                   version=data.validated_data["version"])
        return Response(AliasSerializer(moved).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str, alias: str) -> Response:
        adapter_alias_drop(user=request.user, adapter=adapter_get(user=request.user, name=name), alias=alias)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AdapterCompareApi(APIView):
    class InputSerializer(serializers.Serializer):
        a = serializers.CharField(max_length=64, help_text="a version number, `latest` or an alias")
        b = serializers.CharField(max_length=64, help_text="a version number, `latest` or an alias")

    @extend_schema(parameters=[InputSerializer, OpenApiParameter("name", str, OpenApiParameter.PATH)],
                   responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, name: str) -> Response:
        data = self.InputSerializer(data=request.query_params)
        data.is_valid(raise_exception=True)
        a = adapter_version_get(user=request.user, name=name, ref=data.validated_data["a"])
        b = adapter_version_get(user=request.user, name=name, ref=data.validated_data["b"])
        return Response(adapter_version_compare(a=a, b=b))


@extend_schema_field({"oneOf": [{"type": "string", "maxLength": 20000},
                               {"type": "array", "items": {"type": "string", "maxLength": 200}}]})
class PredictInputField(serializers.Field):
    """A text, or a list of tokens (token-classification); which one a version takes is checked by the service."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and len(data) <= 20_000:
            return data
        if isinstance(data, list) and all(isinstance(t, str) for t in data):
            return data
        raise serializers.ValidationError("a string (at most 20,000 characters) or a list of strings")


class PredictApi(APIView):
    class InputSerializer(serializers.Serializer):
        adapter = serializers.CharField(max_length=200, help_text="name@ref: a version number, latest or an alias")
        inputs = serializers.ListField(child=PredictInputField(), min_length=1, max_length=settings.PREDICT_MAX_INPUTS,
                                       help_text="classification: texts; token-classification: texts (split on "
                                                 "whitespace) or lists of tokens")

    @extend_schema(request=InputSerializer, responses=inline_serializer(
        "Prediction", {"adapter": serializers.CharField(), "version": serializers.IntegerField(),
                       "outputs": serializers.ListField()}))
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(adapter_predict(user=request.user, **data.validated_data))


class AdapterMergeSerializer(serializers.ModelSerializer):
    adapter = serializers.CharField(source="adapter_name")
    version = serializers.IntegerField(source="result.version", allow_null=True, default=None,
                                       help_text="the new version, once the merge succeeded")

    class Meta:
        model = AdapterMerge
        fields = ["id", "adapter", "status", "method", "combination_type", "params", "sources", "version", "error",
                  "created_at", "started_at", "finished_at"]


class MergeSourceSerializer(serializers.Serializer):
    version = serializers.CharField(max_length=200, help_text="name@ref: a version number, latest or an alias")
    weight = serializers.FloatField(default=1.0)


class AdapterMergeListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        sources = MergeSourceSerializer(many=True, min_length=2, max_length=MERGE_MAX_SOURCES)
        combination_type = serializers.ChoiceField(choices=[*LORA_COMBINATIONS, "sum"], help_text=(
            "LoRA versions: peft's add_weighted_adapter types; LT-SFT versions: sum"))
        density = serializers.FloatField(min_value=0.0, max_value=1.0, required=False, allow_null=True,
                                         help_text="the fraction kept by ties / dare / magnitude_prune")
        svd_rank = serializers.IntegerField(min_value=1, max_value=256, required=False, allow_null=True)
        seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0,
                                        help_text="seeds DARE's random pruning")

    @extend_schema(operation_id="adapter_merges_list", responses=paginated(AdapterMergeSerializer),
                   parameters=page_parameters())
    def get(self, request: Request, name: str) -> Response:
        return paginated_response(queryset=adapter_merge_list(user=request.user, name=name),
                                  serializer_class=AdapterMergeSerializer, request=request, view=self)

    @extend_schema(request=InputSerializer, responses={202: AdapterMergeSerializer})
    def post(self, request: Request, name: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        merge = adapter_merge_create(user=request.user, adapter_name=name, sources=data.validated_data["sources"],
                                     combination_type=data.validated_data["combination_type"],
                                     density=data.validated_data.get("density"),
                                     svd_rank=data.validated_data.get("svd_rank"), seed=data.validated_data["seed"])
        return Response(AdapterMergeSerializer(merge).data, status=status.HTTP_202_ACCEPTED)


class AdapterMergeDetailApi(APIView):
    @extend_schema(responses=AdapterMergeSerializer)
    def get(self, request: Request, name: str, merge_id: int) -> Response:
        return Response(AdapterMergeSerializer(adapter_merge_get(user=request.user, name=name,
                                                                 merge_id=merge_id)).data)
