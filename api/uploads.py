from rest_framework import exceptions
from rest_framework.request import Request

MULTIPART_SLACK = 1024 * 1024  # form fields and boundaries around the file


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "payload_too_large"

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def upload_size_check(request: Request, *, limit: int, param: str) -> None:
    """Refuse by the declared Content-Length, before the body is read (the stream is bounded again later)."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise exceptions.ParseError("Content-Length is not a number") from None
    if declared > limit + MULTIPART_SLACK:
        raise PayloadTooLarge(f"upload of {declared} bytes is larger than the limit of {limit} bytes", param)
