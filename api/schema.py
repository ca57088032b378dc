"""OpenAPI tweaks: unique component names for the views' nested Input/Output serializers."""

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework import serializers

NESTED = {"InputSerializer": "Input", "OutputSerializer": "Output"}


class AutoSchema(SpectacularAutoSchema):
    def _get_serializer_name(self, serializer: Any, direction: str, bypass_extensions: bool = False) -> str:
        name = super()._get_serializer_name(serializer, direction, bypass_extensions)
        cls = serializer.__class__
        if cls.__name__ in NESTED and "." in cls.__qualname__:
            owner = cls.__qualname__.split(".")[-2].removesuffix("Api")
            return owner + NESTED[cls.__name__]
        return name


ERRORS = {
    "400": "the request is invalid; error.param names the field",
    "401": "no token, or an unknown, expired or revoked one",
    "403": "not allowed",
    "404": "no such object (another user's objects look the same)",
    "405": "method not allowed",
    "406": "cannot produce the requested content type",
    "409": "the object's state does not allow this",
    "413": "the upload is larger than the limit",
    "415": "unsupported content type",
    "429": "over a quota or the request rate limit",
    "502": "the inference server refused the request",
    "503": "a backing service (storage, inference, broker) is unavailable",
}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "param": {"type": "string", "nullable": True}, "details": {}}, "required": ["code", "message"]}},
    "required": ["error"],
}


def error_responses_add(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Every operation documents the API's error shape for the statuses it can answer with."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/"):
            continue
        for operation in operations.values():
            for status, description in ERRORS.items():
                operation["responses"].setdefault(status, {
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    return result


class PageQuerySerializer(serializers.Serializer):
    """?page and ?page_size, as api.pagination.Pagination reads them."""

    page = serializers.IntegerField(min_value=1, required=False, help_text="page number, from 1")
    page_size = serializers.IntegerField(min_value=1, max_value=200, required=False,
                                         help_text="rows per page (default 50)")


def page_parameters() -> list[Any]:
    return [PageQuerySerializer]


def paginated(serializer_class: type[serializers.Serializer]) -> Any:
    """The schema of a page of `serializer_class` rows, as paginated_response returns it."""
    from drf_spectacular.utils import inline_serializer

    name = serializer_class.__name__.removesuffix("Serializer")
    return inline_serializer(f"Paginated{name}List", {
        "count": serializers.IntegerField(), "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True), "results": serializer_class(many=True)})
