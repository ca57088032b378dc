"""The official `openai` client, unchanged but for base_url, against a live server: files, a fine-tuning job
to success with events and checkpoints, a cancelled job, models, and chat/text completions (streamed too)
from the fine-tuned adapter through a real inference server."""

import io
import json
from typing import Any

import openai
import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings

from api.accounts.services import token_create
from tests.conftest import wait_for

QUESTION = "what colour is the sky?"
CHAT = [{"messages": [{"role": "system", "content": "answer in one word"},
                      {"role": "user", "content": QUESTION}, {"role": "assistant", "content": "blue"}]}] * 16


def _file(rows: list[dict[str, Any]], name: str = "train.jsonl") -> tuple[str, io.BytesIO]:
    return name, io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.fixture
def client(live_server: Any, worker: object) -> openai.OpenAI:
    user = get_user_model().objects.create_user(username="carol")
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=token_create(user=user), max_retries=0)


def test_fine_tune_watch_and_chat_with_the_openai_client(client: openai.OpenAI, inference_url: str) -> None:
    uploaded = client.files.create(file=_file(CHAT), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.purpose == "fine-tune" and uploaded.filename == "train.jsonl"
    assert [f.id for f in client.files.list()] == [uploaded.id]

    with override_settings(CHECKPOINT_EVERY_STEPS=8, INFERENCE_URL=inference_url):
        job = client.fine_tuning.jobs.create(
            model="tiny-llama", training_file=uploaded.id, suffix="sky", seed=7,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 6, "batch_size": 4, "learning_rate_multiplier": 30}}},
            extra_body={"peft": {"method": "lora", "config": {"r": 8, "alpha": 16}}})
        assert job.status in ("validating_files", "queued") and job.model == "tiny-llama"
        assert job.hyperparameters.n_epochs == 6 and job.seed == 7 and job.fine_tuned_model is None
        done = wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id),
                        lambda j: j.status in ("succeeded", "failed", "cancelled"), timeout=120)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == "sky@1" and done.finished_at and done.training_file == uploaded.id
        assert client.files.retrieve(uploaded.id).status == "processed"

        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        assert events[0].data["event"] == "succeeded"  # newest first, as OpenAI lists them
        assert {"created", "queued", "started", "checkpoint"} <= {e.data["event"] for e in events}
        first_page = client.fine_tuning.jobs.list_events(job.id, limit=2)
        assert first_page.has_more and len(first_page.data) == 2
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert checkpoints and all(c.step_number % 8 == 0 and c.fine_tuning_job_id == job.id for c in checkpoints)
        assert checkpoints[0].metrics.train_loss is not None

        other = client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, suffix="sky-2")
        cancelled = client.fine_tuning.jobs.cancel(other.id)
        assert cancelled.status in ("cancelled", "queued", "running")
        assert wait_for(lambda: client.fine_tuning.jobs.retrieve(other.id).status,
                        lambda s: s == "cancelled", timeout=60)
        page = client.fine_tuning.jobs.list(limit=1)
        assert [j.id for j in page.data] == [other.id] and page.has_more
        assert [j.id for j in client.fine_tuning.jobs.list(limit=1, after=other.id).data] == [job.id]

        models = {m.id for m in client.models.list()}
        assert {"tiny-llama", "minilm-l6", "sky@1"} <= models
        assert client.models.retrieve("sky@1").owned_by.startswith("user-")

        messages = [{"role": "system", "content": "answer in one word"}, {"role": "user", "content": QUESTION}]
        chat = client.chat.completions.create(model="sky@1", messages=messages, temperature=0, max_tokens=8)
        answer = chat.choices[0].message.content
        assert chat.model == "sky@1" and chat.choices[0].finish_reason in ("stop", "length")
        assert "blue" in answer, answer
        assert chat.usage.prompt_tokens > 0 and 0 < chat.usage.completion_tokens <= 8

        stream = client.chat.completions.create(model="sky@1", messages=messages, temperature=0, max_tokens=8,
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
        assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

        text = client.completions.create(model="sky@latest", prompt=QUESTION, temperature=0.7, seed=1, n=2,
                                         max_tokens=4)
        assert len(text.choices) == 2 and text.object == "text_completion"


def test_errors_come_in_openai_shape_and_status(client: openai.OpenAI, live_server: Any) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("ftjob-99999")
    assert missing.value.body["type"] == "invalid_request_error" and missing.value.body["code"] == "not_found"

    uploaded = client.files.create(file=_file(CHAT), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id,
                                       extra_body={"peft": {"method": "lora", "config": {"r": 0}}})
    assert bad.value.body["param"] == "peft.config.r"
    with pytest.raises(openai.BadRequestError) as wrong_model:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=uploaded.id)
    assert wrong_model.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.files.create(file=_file(CHAT), purpose="assistants")
    assert wrong_purpose.value.body["param"] == "purpose"

    keeper = client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, suffix="keeps-file")
    with pytest.raises(openai.ConflictError):  # deleting it would orphan the job's dataset: refused
        client.files.delete(uploaded.id)
    spare = client.files.create(file=_file(CHAT[:2], "spare.jsonl"), purpose="fine-tune")
    assert client.files.delete(spare.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(spare.id)

    with pytest.raises(openai.BadRequestError) as base:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}])
    assert base.value.body["param"] == "model"
    stranger = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="af_not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        stranger.models.list()
    assert denied.value.body["code"] == "invalid_api_key"

    # Leave no job running into the next test's database flush: let the one made above finish.
    wait_for(lambda: client.fine_tuning.jobs.retrieve(keeper.id).status,
             lambda s: s in ("cancelled", "succeeded", "failed"), timeout=240)
