from pathlib import Path

from rest_framework.test import APIClient

from tests.integration.test_registry_upload_checks_adapter_against_base import peft_folder, upload_version


def versions(client: APIClient, name: str, tmp_path: Path, count: int) -> None:
    for i in range(count):
        assert upload_version(client, name, peft_folder(tmp_path / str(i), seed=i)).status_code == 201


def numbers(response: object) -> list[int]:
    return [v["version"] for v in response.data["results"]]  # type: ignore[attr-defined]


def test_archive_is_refused_while_an_alias_points_at_the_version(alice: APIClient, tmp_path: Path) -> None:
    versions(alice, "clf", tmp_path, 2)
    alice.put("/api/v1/adapters/clf/aliases/production", {"version": 1}, format="json")
    refused = alice.post("/api/v1/adapters/clf/versions/1/archive")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    assert "production" in refused.json()["error"]["message"]

    alice.delete("/api/v1/adapters/clf/aliases/production")
    archived = alice.post("/api/v1/adapters/clf/versions/1/archive")
    assert archived.status_code == 200 and archived.data["archived"] and archived.data["archived_at"]
    moved = alice.put("/api/v1/adapters/clf/aliases/production", {"version": 1}, format="json")
    assert moved.status_code == 409


def test_archived_versions_are_hidden_from_lists_but_fetchable_by_number(alice: APIClient, tmp_path: Path) -> None:
    versions(alice, "clf", tmp_path, 2)
    alice.post("/api/v1/adapters/clf/versions/2/archive")
    assert numbers(alice.get("/api/v1/adapters/clf/versions")) == [1]
    assert numbers(alice.get("/api/v1/adapters/clf/versions?archived=true")) == [2]
    assert numbers(alice.get("/api/v1/adapters/clf/versions?archived=all")) == [2, 1]
    assert alice.get("/api/v1/adapters/clf/versions?archived=maybe").status_code == 400
    assert alice.get("/api/v1/adapters/clf/versions/2").data["archived"] is True
    assert alice.get("/api/v1/adapters/clf/versions/latest").data["version"] == 1
    detail = alice.get("/api/v1/adapters/clf").data
    assert [v["version"] for v in detail["versions"]] == [1]
    assert detail["latest_version"] == 1 and detail["version_count"] == 1
    assert alice.get("/api/v1/adapters/clf/versions/2/download").status_code == 200


def test_tags_replace_the_list_without_touching_the_files(alice: APIClient, tmp_path: Path) -> None:
    versions(alice, "clf", tmp_path, 2)
    before = alice.get("/api/v1/adapters/clf/versions/1").data
    tagged = alice.put("/api/v1/adapters/clf/versions/1/tags", {"tags": ["baseline", "v1-data", "baseline"]},
                       format="json")
    assert tagged.status_code == 200 and tagged.data["tags"] == ["baseline", "v1-data"]
    alice.put("/api/v1/adapters/clf/versions/latest/tags", {"tags": ["candidate"]}, format="json")
    assert numbers(alice.get("/api/v1/adapters/clf/versions?tag=baseline")) == [1]
    assert numbers(alice.get("/api/v1/adapters/clf/versions?tag=candidate")) == [2]

    replaced = alice.put("/api/v1/adapters/clf/versions/1/tags", {"tags": ["final"]}, format="json")
    assert replaced.data["tags"] == ["final"]
    assert numbers(alice.get("/api/v1/adapters/clf/versions?tag=baseline")) == []
    assert replaced.data["files"] == before["files"] and replaced.data["metadata"] == before["metadata"]


def test_tags_are_bounded(alice: APIClient, tmp_path: Path) -> None:
    versions(alice, "clf", tmp_path, 1)
    for tags in ([f"t{i}" for i in range(33)], ["x" * 65], [""], ["has space"]):
        response = alice.put("/api/v1/adapters/clf/versions/1/tags", {"tags": tags}, format="json")
        assert response.status_code == 400 and response.json()["error"]["param"] == "tags", tags
    assert alice.get("/api/v1/adapters/clf/versions/1").data["tags"] == []


def test_version_list_is_paginated_and_owner_scoped(alice: APIClient, bob: APIClient, tmp_path: Path) -> None:
    versions(alice, "clf", tmp_path, 3)
    page = alice.get("/api/v1/adapters/clf/versions?page=1").data
    assert page["count"] == 3 and page["next"] is None and [v["version"] for v in page["results"]] == [3, 2, 1]
    assert bob.get("/api/v1/adapters/clf/versions").status_code == 404
    assert bob.put("/api/v1/adapters/clf/versions/1/tags", {"tags": ["x"]}, format="json").status_code == 404
    assert bob.post("/api/v1/adapters/clf/versions/1/archive").status_code == 404
