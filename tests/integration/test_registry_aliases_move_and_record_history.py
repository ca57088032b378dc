from pathlib import Path

from rest_framework.test import APIClient

from tests.integration.test_registry_upload_checks_adapter_against_base import peft_folder, upload_version


def two_versions(client: APIClient, name: str, tmp_path: Path) -> None:
    for i, r in enumerate((4, 8)):
        assert upload_version(client, name, peft_folder(tmp_path / str(i), r=r)).status_code == 201


def test_alias_move_switches_what_the_alias_ref_returns_and_is_recorded(alice: APIClient, tmp_path: Path) -> None:
    two_versions(alice, "clf", tmp_path)
    moved = alice.put("/api/v1/adapters/clf/aliases/production", {"version": 1}, format="json")
    assert moved.status_code == 200 and moved.data["version"] == 1
    assert alice.get("/api/v1/adapters/clf/versions/production").data["version"] == 1

    assert alice.put("/api/v1/adapters/clf/aliases/production", {"version": 2}, format="json").data["version"] == 2
    fetched = alice.get("/api/v1/adapters/clf/versions/production").data
    assert fetched["version"] == 2 and fetched["aliases"] == ["production"]
    assert alice.get("/api/v1/adapters/clf/versions/1").data["aliases"] == []
    alice.put("/api/v1/adapters/clf/aliases/production", {"version": 2}, format="json")  # no move, no history

    assert alice.delete("/api/v1/adapters/clf/aliases/production").status_code == 204
    assert alice.get("/api/v1/adapters/clf/versions/production").status_code == 404
    assert alice.delete("/api/v1/adapters/clf/aliases/production").status_code == 404

    listed = alice.get("/api/v1/adapters/clf/aliases").data
    assert listed["aliases"] == []
    assert [(m["alias"], m["from_version"], m["to_version"], m["user"]) for m in listed["history"]] == [
        ("production", 2, None, "alice"), ("production", 1, 2, "alice"), ("production", None, 1, "alice")]
    assert all(m["created_at"] for m in listed["history"])


def test_aliases_list_current_targets(alice: APIClient, tmp_path: Path) -> None:
    two_versions(alice, "clf", tmp_path)
    alice.put("/api/v1/adapters/clf/aliases/staging", {"version": 2}, format="json")
    alice.put("/api/v1/adapters/clf/aliases/production", {"version": 1}, format="json")
    listed = alice.get("/api/v1/adapters/clf/aliases").data["aliases"]
    assert [(a["name"], a["version"]) for a in listed] == [("production", 1), ("staging", 2)]


def test_alias_names_and_targets_are_checked(alice: APIClient, tmp_path: Path) -> None:
    two_versions(alice, "clf", tmp_path)
    for bad in ("123", "latest", "a.b"):
        response = alice.put(f"/api/v1/adapters/clf/aliases/{bad}", {"version": 1}, format="json")
        assert response.status_code == 400 and response.json()["error"]["param"] == "alias", bad
    missing = alice.put("/api/v1/adapters/clf/aliases/production", {"version": 9}, format="json")
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "version"
    assert alice.get("/api/v1/adapters/clf/aliases").data["history"] == []


def test_alias_of_another_users_adapter_is_404(alice: APIClient, bob: APIClient, tmp_path: Path) -> None:
    two_versions(alice, "clf", tmp_path)
    alice.put("/api/v1/adapters/clf/aliases/production", {"version": 1}, format="json")
    assert bob.put("/api/v1/adapters/clf/aliases/production", {"version": 2}, format="json").status_code == 404
    assert bob.delete("/api/v1/adapters/clf/aliases/production").status_code == 404
    assert bob.get("/api/v1/adapters/clf/aliases").status_code == 404
    response = bob.get("/api/v1/adapters/clf/versions/production")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert alice.get("/api/v1/adapters/clf/versions/production").data["version"] == 1
