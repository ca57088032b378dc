import io

from django.core.management import call_command
from rest_framework.test import APIClient


def test_health_reports_database_broker_and_storage(db: None, bucket: None) -> None:
    response = APIClient().get("/api/v1/health")
    assert response.status_code == 200
    assert response.data == {"ok": True, "checks": {"database": {"ok": True}, "broker": {"ok": True},
                                                    "storage": {"ok": True}}}


def test_health_says_which_part_is_down(db: None, bucket: None, settings: object) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]
    response = APIClient().get("/api/v1/health")
    assert response.status_code == 503
    assert response.data["checks"]["broker"]["ok"] is False and response.data["checks"]["storage"]["ok"] is True


def test_base_models_and_methods_are_listed(alice: APIClient) -> None:
    models = {m["id"]: m for m in alice.get("/api/v1/base-models").data["data"]}
    assert models["minilm-l6"]["tasks"] == ["classification", "token-classification"]
    assert models["minilm-l6"]["source"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert models["tiny-llama"]["tasks"] == ["sft"]
    methods = {m["name"]: m for m in alice.get("/api/v1/methods").data["data"]}
    schema = methods["lora"]["schema"]["properties"]
    assert schema["r"]["minimum"] == 1 and schema["r"]["maximum"] == 256
    assert "Rank" in schema["r"]["description"]
    assert methods["lora"]["tasks"] == ["classification", "sft", "token-classification"]
    assert methods["prompt_tuning"]["tasks"] == ["classification", "sft"]


def test_openapi_schema_and_docs_are_served(db: None) -> None:
    client = APIClient()
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/jobs/{job_id}/cancel" in paths and "/api/v1/datasets" in paths
    assert client.get("/api/docs/").status_code == 200


def test_createtoken_makes_the_user_and_a_working_token(db: None) -> None:
    out = io.StringIO()
    call_command("createtoken", "carol", stdout=out)
    token = out.getvalue().strip()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/jobs").status_code == 200
    call_command("createtoken", "carol", stdout=io.StringIO())  # a second token for the same user
    from api.accounts.models import ApiToken

    assert ApiToken.objects.filter(user__username="carol").count() == 2
    assert not ApiToken.objects.filter(key_hash=token).exists()  # only the hash is stored
