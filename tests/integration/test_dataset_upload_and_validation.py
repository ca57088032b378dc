import json

from django.test import override_settings
from rest_framework.test import APIClient

from api.datasets.models import Dataset
from storage import keys, s3
from tests.conftest import SENTIMENT, dataset_ready, jsonl, upload


def test_upload_validates_on_the_worker_and_reports_stats(worker: object, alice: APIClient) -> None:
    dataset = dataset_ready(alice, jsonl(SENTIMENT), name="sentiment")
    assert dataset["status"] == "ready"
    assert dataset["rows"] == 40 and dataset["name"] == "sentiment"
    stats = dataset["report"]["stats"]
    assert stats["label_counts"] == {"neg": 20, "pos": 20}
    lengths = stats["token_lengths"]
    assert lengths["tokenizer"] == "minilm-l6" and 3 <= lengths["p50"] <= lengths["max"] <= 10
    assert s3.exists(keys.dataset(dataset["sha256"]))


def test_bad_lines_make_the_dataset_invalid_with_a_line_report(worker: object, alice: APIClient) -> None:
    rows = [*SENTIMENT[:3], "{broken", json.dumps({"text": "", "label": "pos"}), json.dumps({"txt": "x"})]
    dataset = dataset_ready(alice, jsonl(rows))
    assert dataset["status"] == "invalid"
    errors = dataset["report"]["errors"]
    assert [(e["line"], e["field"]) for e in errors] == [(4, None), (5, "text"), (6, "text"), (6, "label")]
    assert dataset["report"]["error_count"] == 4 and dataset["report"]["stats"]["rows"] == 3


def test_single_label_and_empty_files_are_invalid(worker: object, alice: APIClient) -> None:
    one_label = dataset_ready(alice, jsonl([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]))
    assert one_label["status"] == "invalid"
    assert "need at least two" in one_label["report"]["errors"][0]["message"]
    blank = dataset_ready(alice, b"\n\n")
    assert blank["status"] == "invalid" and blank["report"]["errors"][0]["message"] == "the file has no rows"


def test_same_content_is_stored_once(worker: object, alice: APIClient) -> None:
    first = dataset_ready(alice, jsonl(SENTIMENT))
    second = dataset_ready(alice, jsonl(SENTIMENT), filename="again.jsonl")
    assert first["id"] != second["id"] and first["sha256"] == second["sha256"]
    assert s3.list_keys(keys.dataset(first["sha256"])) == [keys.dataset(first["sha256"])]


def test_upload_refusals_name_the_problem(alice: APIClient) -> None:
    response = upload(alice, b"x", filename="data.pickle")
    assert response.status_code == 400
    assert response.data["error"]["param"] == "file" and "unsupported file type .pickle" in response.data["error"][
        "message"]
    response = upload(alice, jsonl(SENTIMENT), task="poetry")
    assert response.status_code == 400 and response.data["error"]["param"] == "task"
    response = upload(alice, jsonl(SENTIMENT), base_model="gpt-17")
    assert response.status_code == 400 and response.data["error"]["param"] == "base_model"
    with override_settings(DATASET_MAX_BYTES=100):
        response = upload(alice, jsonl(SENTIMENT))
    assert response.status_code == 413 and "larger than the limit of 100 bytes" in response.data["error"]["message"]
    assert Dataset.objects.count() == 0


def test_upload_needs_a_token(db: None) -> None:
    response = upload(APIClient(), jsonl(SENTIMENT))
    assert response.status_code == 401
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer af_not-a-token")
    assert upload(bad, jsonl(SENTIMENT)).status_code == 401


def test_oversized_body_is_refused_before_it_is_read(alice: APIClient) -> None:
    with override_settings(DATASET_MAX_BYTES=10):
        response = alice.post("/api/v1/datasets", data=b"x" * (2 * 1024 * 1024),
                              content_type="multipart/form-data; boundary=zzz")
    assert response.status_code == 413
    assert response.data["error"]["param"] == "file" and "larger than the limit" in response.data["error"]["message"]
