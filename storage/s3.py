"""The narrow S3 layer: one lazily created boto3 client, a few functions, one exception."""

import base64
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

CHUNK = 1024 * 1024


class StorageError(Exception):
    """The object store failed or refused; the message says which key and why."""


_client: Any = None
_lock = threading.Lock()


def client() -> Any:
    global _client
    with _lock:
        if _client is None:
            _client = boto3.client(
                "s3",
                endpoint_url=settings.S3_ENDPOINT_URL,
                aws_access_key_id=settings.S3_ACCESS_KEY_ID or None,
                aws_secret_access_key=settings.S3_SECRET_ACCESS_KEY or None,
                region_name=settings.S3_REGION,
                config=Config(
                    retries={"mode": "standard", "max_attempts": 5},
                    s3={"addressing_style": "path"},
                    connect_timeout=5,
                    read_timeout=60,
                ),
            )
        return _client


def reset_client() -> None:
    """Forget the client, e.g. after the endpoint setting changed."""
    global _client
    with _lock:
        _client = None


def _call(what: str, key: str, fn: Any, **kwargs: Any) -> Any:
    try:
        return fn(Bucket=settings.S3_BUCKET, **kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"{what} {key!r} failed: {exc}") from exc


def bucket_ensure() -> None:
    try:
        client().head_bucket(Bucket=settings.S3_BUCKET)
        return
    except ClientError:
        pass
    except BotoCoreError as exc:
        raise StorageError(f"object store at {settings.S3_ENDPOINT_URL} unreachable: {exc}") from exc
    try:
        client().create_bucket(Bucket=settings.S3_BUCKET)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise StorageError(f"cannot create bucket {settings.S3_BUCKET!r}: {exc}") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def put_bytes(key: str, data: bytes) -> str:
    """Store bytes; the store verifies the sha256 we send. Returns the hex sha256."""
    digest = hashlib.sha256(data).digest()
    _call(
        "put",
        key,
        client().put_object,
        Key=key,
        Body=data,
        ChecksumSHA256=base64.b64encode(digest).decode(),
        Metadata={"sha256": digest.hex()},
    )
    return digest.hex()


def put_file(key: str, path: Path, *, sha256: str | None = None) -> str:
    """Store a local file under key with its sha256 checked by the store. Returns the hex sha256."""
    hex_digest = sha256 or sha256_file(path)
    with open(path, "rb") as fh:
        _call(
            "put",
            key,
            client().put_object,
            Key=key,
            Body=fh,
            ChecksumSHA256=base64.b64encode(bytes.fromhex(hex_digest)).decode(),
            Metadata={"sha256": hex_digest},
        )
    return hex_digest


def exists(key: str) -> bool:
    try:
        client().head_object(Bucket=settings.S3_BUCKET, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise StorageError(f"head {key!r} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"head {key!r} failed: {exc}") from exc


def open_object(key: str) -> Any:
    """A streaming body (botocore StreamingBody) for key; read it in chunks."""
    return _call("get", key, client().get_object, Key=key)["Body"]


def iter_object(key: str) -> Iterator[bytes]:
    body = open_object(key)
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def get_bytes(key: str) -> bytes:
    body = open_object(key)
    try:
        return body.read()
    finally:
        body.close()


def download_file(key: str, path: Path, *, sha256: str | None = None) -> None:
    """Stream key to path; with sha256 given, a mismatch raises and leaves no file."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        for chunk in iter_object(key):
            digest.update(chunk)
            fh.write(chunk)
    if sha256 and digest.hexdigest() != sha256:
        tmp.unlink()
        raise StorageError(f"checksum mismatch for {key!r}: expected {sha256}, got {digest.hexdigest()}")
    tmp.replace(path)


def list_keys(prefix: str) -> list[str]:
    keys: list[str] = []
    paginator = client().get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=settings.S3_BUCKET, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"list {prefix!r} failed: {exc}") from exc
    return keys


def delete_prefix(prefix: str) -> int:
    """Delete every key under prefix (which must name a folder below the root). Returns the count."""
    if not prefix.strip("/") or not prefix.endswith("/"):
        raise StorageError(f"refusing to delete prefix {prefix!r}: it must be a non-root folder ending in '/'")
    keys = list_keys(prefix)
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        _call("delete", prefix, client().delete_objects, Delete={"Objects": batch, "Quiet": True})
    return len(keys)


def presigned_url(key: str, *, seconds: int | None = None, filename: str | None = None) -> str:
    params: dict[str, str] = {"Bucket": settings.S3_BUCKET, "Key": key}
    if filename:
        params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
    return client().generate_presigned_url(
        "get_object", Params=params, ExpiresIn=seconds or settings.S3_PRESIGN_SECONDS
    )


def ping() -> None:
    _call("head bucket", settings.S3_BUCKET, client().head_bucket)
