"""OpenAI's error shape, {"error": {"message", "type", "param", "code"}}, with its status codes, built on the
API's own handler so both facades agree on what each exception means."""

from typing import Any

from rest_framework import status
from rest_framework.response import Response

from api.errors import api_exception_handler
from api.openai_compat.services import OpenAIInputError

CODES = {401: "invalid_api_key", 404: "not_found", 409: "conflict"}


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, OpenAIInputError):
        return Response({"error": {"message": str(exc), "type": "invalid_request_error", "param": exc.param,
                                   "code": "invalid_request"}}, status=status.HTTP_400_BAD_REQUEST)
    response = api_exception_handler(exc, context)
    if response is None:
        return None
    error = response.data["error"]
    response.data = {"error": {
        "message": error["message"],
        "type": "server_error" if response.status_code >= 500 else "invalid_request_error",
        "param": error.get("param"),
        "code": CODES.get(response.status_code, error.get("code")),
    }}
    return response
