"""/api/v1/predict for token-classification versions: inputs as a text (split on whitespace) or a list of tokens,
one {"token", "label", "score"} per word, the first sub-token of each word deciding; equal to plain peft's."""

import io
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from django.test import override_settings
from rest_framework.test import APIClient

from workers.base_models import base_model_get, model_load, tokenizer_load

TAGS = ["O", "B-ORG", "I-ORG", "B-MISC"]
TOKENS = ["EU", "rejects", "German", "call", "to", "boycott", "Britishness", "lamb", "."]




def tagger() -> Any:
    entry = base_model_get("tiny-bert")
    return model_load(entry, task="token-classification", vocab_size=len(tokenizer_load(entry)), labels=TAGS)


def tagger_folder(path: Path) -> Path:
    """A LoRA tagger as the publisher lays it out: peft's TOKEN_CLS folder, the tag list in foundry.json."""
    torch.manual_seed(0)
    config = peft.LoraConfig(task_type=peft.TaskType.TOKEN_CLS, r=4, target_modules=["query", "value"],
                             init_lora_weights=False)
    model = peft.get_peft_model(tagger(), config)
    with torch.no_grad():
        for p in model.base_model.model.classifier.modules_to_save["default"].parameters():
            p.normal_(std=2.0)  # confident, varied tags
    model.save_pretrained(path)
    return path


def upload(client: APIClient, name: str, folder: Path) -> Any:
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        file = io.BytesIO(path.read_bytes())
        file.name = path.name
        files.append(file)
    return client.post(f"/api/v1/adapters/{name}/versions", {"files": files, "base_model": "tiny-bert",
                                                             "labels": TAGS}, format="multipart")


def test_tokens_get_the_tag_of_their_first_subtoken(alice: APIClient, bob: APIClient, inference_url: str,
                                                    tmp_path: Path) -> None:
    folder = tagger_folder(tmp_path / "ner")
    created = upload(alice, "ner", folder)
    assert created.status_code == 201, created.content
    assert created.data["metadata"]["task"] == "token-classification"
    assert created.data["metadata"]["labels"] == TAGS

    with override_settings(INFERENCE_URL=inference_url):
        response = alice.post("/api/v1/predict", {"adapter": "ner@1", "inputs": [" ".join(TOKENS), TOKENS[:3]]},
                              format="json")
        assert response.status_code == 200, response.data
        text_tags, list_tags = response.data["outputs"]
        assert [t["token"] for t in text_tags] == TOKENS and [t["token"] for t in list_tags] == TOKENS[:3]

        tokenizer = tokenizer_load(base_model_get("tiny-bert"))
        encoded = tokenizer([TOKENS], is_split_into_words=True, return_tensors="pt")
        assert len(encoded["input_ids"][0]) > len(TOKENS) + 2  # some word has several sub-tokens
        model = peft.PeftModel.from_pretrained(tagger(), folder).eval()
        with torch.no_grad():
            probabilities = model(**encoded).logits.softmax(-1)[0]
        seen: set[int] = set()
        want = []
        for position, word in enumerate(encoded.word_ids(0)):
            if word is not None and word not in seen:
                seen.add(word)
                want.append((TAGS[int(probabilities[position].argmax())], float(probabilities[position].max())))
        assert [(t["label"], pytest.approx(t["score"], abs=1e-5)) for t in text_tags] == want
        assert len({t["label"] for t in text_tags}) > 1  # not one tag for everything

        refused = alice.post("/api/v1/predict", {"adapter": "ner@1", "inputs": [["EU", ""]]}, format="json")
        assert refused.status_code == 400 and refused.data["error"]["param"] == "inputs[0]"
        assert bob.post("/api/v1/predict", {"adapter": "ner@1", "inputs": ["EU"]}, format="json").status_code == 404
