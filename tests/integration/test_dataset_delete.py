"""DELETE /datasets/{id}: the owner's unused dataset goes (and its bytes leave the quota); one a job used
stays (409, naming the job); another user's is a 404. The OpenAI facade's file delete follows the same rule."""

from rest_framework.test import APIClient

from api.accounts.quotas import user_storage_bytes
from api.jobs.models import Job
from tests.conftest import SENTIMENT, jsonl, upload


def test_an_unused_dataset_is_deleted_and_a_used_one_is_kept(alice: APIClient, bob: APIClient) -> None:
    kept = upload(alice, jsonl(SENTIMENT)).data
    spare = upload(alice, jsonl(SENTIMENT[:6]), filename="spare.jsonl").data
    before = user_storage_bytes(user=alice.user)  # type: ignore[attr-defined]

    assert bob.delete(f"/api/v1/datasets/{spare['id']}").status_code == 404
    assert alice.delete(f"/api/v1/datasets/{spare['id']}").status_code == 204
    assert alice.get(f"/api/v1/datasets/{spare['id']}").status_code == 404
    assert user_storage_bytes(user=alice.user) == before - spare["size_bytes"]  # type: ignore[attr-defined]

    job = Job.objects.create(owner=alice.user, base_model="tiny-bert", task="classification",  # type: ignore[attr-defined]
                             dataset_id=kept["id"], adapter_name="uses-it", status="cancelled")
    refused = alice.delete(f"/api/v1/datasets/{kept['id']}")
    assert refused.status_code == 409 and f"[{job.id}]" in refused.data["error"]["message"]
    openai_refused = alice.delete(f"/v1/files/file-{kept['id']}")
    assert openai_refused.status_code == 409
    assert alice.get(f"/api/v1/datasets/{kept['id']}").status_code == 200
