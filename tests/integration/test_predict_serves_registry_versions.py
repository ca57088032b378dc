"""/api/v1/predict through a real inference server: versions load on first use from S3, aliases
resolve per request, rows for different adapters share a batch, and the cache evicts by LRU."""

import threading
from typing import Any

import torch
from django.test import override_settings
from rest_framework.test import APIClient

from api.registry.models import AdapterVersion
from storage.embedded import free_port
from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl
from workers.inference.cache import AdapterCache
from workers.inference.engine import Engine

TEXTS = ["great movie number 7", "awful movie number 7", "an ordinary sentence"]




def _train(client: APIClient, name: str, rows: list[dict[str, Any]], seed: int) -> int:
    dataset = dataset_ready(client, jsonl(rows))
    job = client.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification", "dataset": dataset["id"],
                                       "adapter_name": name, "hyperparameters": {"epochs": 5, "batch_size": 8,
                                                                                "learning_rate": 0.01, "seed": seed}},
                      format="json").data
    done = job_final(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    return done["result"]["version"]


def test_alias_moves_switch_what_predict_serves(worker: object, alice: APIClient, bob: APIClient,
                                               inference_url: str) -> None:
    with override_settings(INFERENCE_URL=inference_url):
        first = _train(alice, "sent", SENTIMENT, seed=1)  # published after the server started
        flipped = [{**row, "label": "neg" if row["label"] == "pos" else "pos"} for row in SENTIMENT]
        second = _train(alice, "sent", flipped, seed=2)
        assert (first, second) == (1, 2)
        assert alice.put("/api/v1/adapters/sent/aliases/production", {"version": 1}, format="json").status_code in (
            200, 201)
        one = alice.post("/api/v1/predict", {"adapter": "sent@production", "inputs": TEXTS}, format="json")
        assert one.status_code == 200, one.data
        assert one.data["version"] == 1 and len(one.data["outputs"]) == 3
        assert set(one.data["outputs"][0]["scores"]) == {"neg", "pos"}
        assert abs(sum(one.data["outputs"][0]["scores"].values()) - 1) < 1e-4

        alice.put("/api/v1/adapters/sent/aliases/production", {"version": 2}, format="json")
        two = alice.post("/api/v1/predict", {"adapter": "sent@production", "inputs": TEXTS}, format="json").data
        assert two["version"] == 2 and two["outputs"] != one.data["outputs"]
        latest = alice.post("/api/v1/predict", {"adapter": "sent", "inputs": TEXTS}, format="json").data
        assert latest["outputs"] == two["outputs"]

        assert bob.post("/api/v1/predict", {"adapter": "sent@1", "inputs": TEXTS}, format="json").status_code == 404
        bad = alice.post("/api/v1/predict", {"adapter": "sent@1", "inputs": []}, format="json")
        assert bad.status_code == 400 and bad.data["error"]["param"] == "inputs"
    with override_settings(INFERENCE_URL=f"http://127.0.0.1:{free_port()}"):
        down = alice.post("/api/v1/predict", {"adapter": "sent@1", "inputs": TEXTS}, format="json")
        assert down.status_code == 503 and down.data["error"]["code"] == "inference_unavailable"


def _version(adapter_version: AdapterVersion) -> dict[str, Any]:
    return {"prefix": adapter_version.prefix, "files": adapter_version.files, "metadata": adapter_version.metadata}


def test_mixed_adapter_batch_equals_one_adapter_at_a_time_and_lru_evicts(worker: object, alice: APIClient) -> None:
    _train(alice, "left", SENTIMENT, seed=3)
    _train(alice, "right", SENTIMENT[::-1], seed=4)
    left, right = (_version(AdapterVersion.objects.get(adapter__name=n)) for n in ("left", "right"))

    alone = Engine(AdapterCache(max_adapters=8, max_bytes=10**9), window_ms=0)
    expected = [alone.predict(left, TEXTS), alone.predict(right, TEXTS)]

    batched = Engine(AdapterCache(max_adapters=8, max_bytes=10**9), window_ms=300)
    batched.predict(left, TEXTS[:1])  # load both first so the timed window holds only the two requests
    batched.predict(right, TEXTS[:1])
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=lambda n=n, v=v: results.__setitem__(n, batched.predict(v, TEXTS)))
               for n, v in (("left", left), ("right", right))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert batched.batch_sizes[-1] == 2 * len(TEXTS)  # one forward pass for both adapters
    for got, want in zip([results["left"], results["right"]], expected, strict=True):
        for g, w in zip(got, want, strict=True):
            assert g["label"] == w["label"]
            assert torch.allclose(torch.tensor(list(g["scores"].values())), torch.tensor(list(w["scores"].values())),
                                  atol=1e-5)

    small = Engine(AdapterCache(max_adapters=1, max_bytes=10**9), window_ms=0)
    small.predict(left, TEXTS)
    small.predict(right, TEXTS)
    small.predict(left, TEXTS)
    metrics = small.metrics()
    assert metrics["cold_loads"] == 3 and metrics["evictions"] == 2 and metrics["adapters_loaded"] == 1
    small.predict(left, TEXTS)
    assert small.metrics()["cache_hits"] == 1
