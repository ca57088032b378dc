"""One error shape for the whole API: {"error": {"code", "message", "param"}}.

Domain errors carry a `param`; they map to 400, state conflicts to 409, storage trouble to 503."""

from typing import Any

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from api.datasets.services import DatasetError, DatasetInUse
from api.jobs.services import JobInputError, JobStateError
from api.registry.services import InferenceError
from storage.s3 import StorageError


def _first(detail: Any, path: str = "") -> tuple[str, str]:
    if isinstance(detail, dict):
        key, value = next(iter(detail.items()))
        return _first(value, key if not path else f"{path}.{key}")
    if isinstance(detail, list) and detail:
        return _first(detail[0], path)
    return path, str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, (DatasetError, JobInputError)):
        return Response({"error": {"code": "invalid_request", "message": str(exc), "param": exc.param}},
                        status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, (JobStateError, DatasetInUse)):
        return Response({"error": {"code": "conflict", "message": str(exc), "param": None}},
                        status=status.HTTP_409_CONFLICT)
    if isinstance(exc, InferenceError):
        return Response({"error": {"code": "inference_unavailable" if exc.status == 503 else "inference_error",
                                   "message": str(exc), "param": None}}, status=exc.status)
    if isinstance(exc, StorageError):
        return Response({"error": {"code": "storage_unavailable", "message": str(exc), "param": None}},
                        status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first(exc.detail)
        response.data = {"error": {"code": "invalid_request", "message": f"{param}: {message}" if param else message,
                                   "param": param or None, "details": exc.detail}}
    else:
        code = getattr(exc, "default_code", "error")
        detail = response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
        response.data = {"error": {"code": code, "message": str(detail), "param": getattr(exc, "param", None)}}
    return response


def _json_error(request: Any, status: int, code: str, message: str) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"error": {"code": code, "message": message, "param": None}}, status=status)


def not_found(request: Any, exception: Exception | None = None) -> Any:
    """404 for a URL no route matches: the API's JSON shape under /api/ and /v1/, Django's page elsewhere."""
    from django.views.defaults import page_not_found

    if request.path.startswith(("/api/", "/v1/")):
        return _json_error(request, 404, "not_found", f"no route for {request.path}")
    return page_not_found(request, exception or Http404())


def bad_request(request: Any, exception: Exception | None = None) -> Any:
    """400 that Django raises itself (e.g. too many form fields, a suspicious request)."""
    from django.views.defaults import bad_request as django_bad_request

    if request.path.startswith(("/api/", "/v1/")):
        return _json_error(request, 400, "invalid_request", f"the request was refused: {exception}")
    return django_bad_request(request, exception)
