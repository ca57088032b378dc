import hashlib
import io
import time
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from peft import PeftModel
from rest_framework.test import APIClient

from api.accounts.services import token_create
from api.registry.models import AdapterVersion
from storage import s3
from tests.integration.test_registry_upload_checks_adapter_against_base import peft_folder, tiny_bert, upload_version


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])).logits


def test_streamed_archive_loads_in_plain_peft(alice: APIClient, tmp_path: Path) -> None:
    original = peft_folder(tmp_path / "original")
    assert upload_version(alice, "clf", original).status_code == 201

    response = alice.get("/api/v1/adapters/clf/versions/latest/download")
    assert response.status_code == 200 and response.streaming and response["Content-Type"] == "application/zip"
    assert 'filename="clf-v1.zip"' in response["Content-Disposition"]
    chunks = list(response.streaming_content)
    assert len(chunks) > 1  # sent as it is made, entry by entry
    out = tmp_path / "downloaded"
    zipfile.ZipFile(io.BytesIO(b"".join(chunks))).extractall(out)
    recorded = {f["name"]: f["sha256"] for f in alice.get("/api/v1/adapters/clf/versions/1").data["files"]}
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == recorded
    assert (out / "adapter_model.safetensors").read_bytes() == (original / "adapter_model.safetensors").read_bytes()

    loaded = PeftModel.from_pretrained(tiny_bert(), out).eval()
    reference = PeftModel.from_pretrained(tiny_bert(), original).eval()
    assert torch.allclose(logits(loaded), logits(reference))
    assert not torch.allclose(logits(loaded), logits(tiny_bert().eval()))
    card = (out / "README.md").read_text()
    assert "# clf v1" in card and "PeftModel.from_pretrained" in card and "tiny-bert" in card


def test_presigned_file_urls_fetch_the_same_bytes(alice: APIClient, tmp_path: Path) -> None:
    assert upload_version(alice, "clf", peft_folder(tmp_path / "a")).status_code == 201
    archive = zipfile.ZipFile(io.BytesIO(alice.get("/api/v1/adapters/clf/versions/1/download").getvalue()))
    listed = alice.get("/api/v1/adapters/clf/versions/1/files").data
    assert listed["expires_in"] == 300 and listed["version"] == 1
    assert {f["name"] for f in listed["files"]} == set(archive.namelist())
    for entry in listed["files"]:
        query = parse_qs(urlsplit(entry["url"]).query)
        expires = int(query["X-Amz-Expires"][0]) if "X-Amz-Expires" in query else int(query["Expires"][0]) - time.time()
        assert 250 < expires <= 300
        with urllib.request.urlopen(entry["url"], timeout=30) as fetched:
            body = fetched.read()
        assert body == archive.read(entry["name"]) and hashlib.sha256(body).hexdigest() == entry["sha256"]


def test_other_users_download_and_files_are_404(alice: APIClient, bob: APIClient, tmp_path: Path) -> None:
    assert upload_version(alice, "clf", peft_folder(tmp_path / "a")).status_code == 201
    assert bob.get("/api/v1/adapters/clf/versions/1/download").status_code == 404
    assert bob.get("/api/v1/adapters/clf/versions/1/files").status_code == 404


def test_tampered_object_breaks_the_stream_instead_of_serving_it(alice: APIClient, tmp_path: Path) -> None:
    assert upload_version(alice, "clf", peft_folder(tmp_path / "a")).status_code == 201
    version = AdapterVersion.objects.get(adapter__name="clf", version=1)
    s3.put_bytes(version.prefix + "adapter_model.safetensors", b"tampered")
    response = alice.get("/api/v1/adapters/clf/versions/1/download")
    with pytest.raises(s3.StorageError, match="do not match their sha256"):
        b"".join(response.streaming_content)


def test_download_streams_under_asgi(alice: APIClient, tmp_path: Path) -> None:
    """Under ASGI the body is an async iterator: Django would otherwise drain a sync one into a list first."""
    assert upload_version(alice, "clf", peft_folder(tmp_path / "a")).status_code == 201
    client, token = AsyncClient(), token_create(user=alice.user)

    async def download() -> tuple[int, bool, bytes]:
        response = await client.get("/api/v1/adapters/clf/versions/1/download",
                                    headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.content
        return response.status_code, response.is_async, b"".join([c async for c in response.streaming_content])

    status, is_async, body = async_to_sync(download)()
    assert status == 200 and is_async
    assert "adapter_model.safetensors" in zipfile.ZipFile(io.BytesIO(body)).namelist()
