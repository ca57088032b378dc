"""token-classification: every bad row named by line and field, words aligned to sub-tokens (label on the first
one), and entity-level scores that follow conlleval's chunk rules."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from api.datasets.examples import Example, examples_iter
from workers.base_models import base_model_get, tokenizer_load
from workers.training.data import encode_all, labels_for
from workers.training.tokens import IGNORE, entity_scores, metrics_for, spans

TASK = "token-classification"


def _read(tmp_path: Path, content: bytes, fmt: str = "jsonl") -> tuple[list[Example], list[dict]]:
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(content)
    good, bad = [], []
    for _, item in examples_iter(path, fmt, TASK):
        if isinstance(item, list):
            bad.extend(p.as_dict() for p in item)
        else:
            good.append(item)
    return good, bad


def test_bad_rows_are_reported_with_line_and_field(tmp_path: Path) -> None:
    rows = [
        {"tokens": ["EU", "rejects", "German", "call"], "labels": ["B-ORG", "O", "B-MISC", "O"]},
        {"tokens": ["EU", "rejects"], "labels": ["B-ORG"]},
        {"labels": ["O"]},
        {"tokens": ["EU"]},
        {"tokens": ["EU", 3], "labels": ["B-ORG", "O"]},
        {"tokens": ["EU", " "], "labels": ["B-ORG", "O"]},
        {"tokens": [], "labels": []},
        {"tokens": "EU", "labels": "B-ORG"},
        {"tokens": ["EU"], "labels": ["B-ORG"], "tags": ["B-ORG"]},
        {"tokens": ["Oslo"], "tags": ["B-LOC"]},
    ]
    good, bad = _read(tmp_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    assert [(p["line"], p["field"]) for p in bad] == [
        (2, "labels"), (3, "tokens"), (4, "labels"), (5, "tokens[1]"), (6, "tokens[1]"), (7, "tokens"),
        (7, "labels"), (8, "tokens"), (8, "labels"), (9, "labels")]
    assert "1 labels for 2 tokens" in bad[0]["message"]
    assert "must be a string, got int" in bad[3]["message"]
    assert "non-empty list" in bad[5]["message"]
    assert "not a JSON list" in bad[7]["message"]
    assert "one of 'labels' or 'tags'" in bad[9]["message"]
    assert [(e.tokens, e.tags) for e in good] == [(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O")),
                                                  (("Oslo",), ("B-LOC",))]


def test_csv_and_tsv_carry_the_lists_as_json(tmp_path: Path) -> None:
    content = b'tokens,labels\n"[""Ada"", ""spoke""]","[""B-PER"", ""O""]"\n"[""x""]","B-PER"\n'
    good, bad = _read(tmp_path, content, "csv")
    assert [e.tags for e in good] == [("B-PER", "O")]
    assert [(p["line"], p["field"]) for p in bad] == [(3, "labels")]
    good, bad = _read(tmp_path, b'tokens\ttags\n["Ada", "spoke"]\t["B-PER", "O"]\n', "tsv")
    assert [e.tokens for e in good] == [("Ada", "spoke")] and not bad
    good, bad = _read(tmp_path, b"tokens\ttags\n" + b"[" * 100_000 + b"\t[]\n", "tsv")
    assert not good and bad[0]["field"] == "tokens" and "nested too deeply" in bad[0]["message"]


def test_label_sits_on_the_first_sub_token_of_each_word() -> None:
    tokenizer = tokenizer_load(base_model_get("minilm-l6"))
    example = Example(tokens=("EU", "rejects", "Germanwings", "call"), tags=("B-ORG", "O", "B-MISC", "O"))
    labels = labels_for(TASK, [example])
    assert labels == ["B-MISC", "B-ORG", "O"]
    row = encode_all(tokenizer, TASK, [example], 32, {name: i for i, name in enumerate(labels)})[0]
    pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert pieces == ["[CLS]", "eu", "rejects", "german", "##wing", "##s", "call", "[SEP]"]
    assert row["labels"] == [IGNORE, 1, 2, 0, IGNORE, IGNORE, 2, IGNORE]
    truncated = encode_all(tokenizer, TASK, [example], 5, {name: i for i, name in enumerate(labels)})[0]
    assert truncated["labels"] == [IGNORE, 1, 2, 0, IGNORE]  # words cut off are not scored


@pytest.mark.parametrize(("tags", "expected"), [
    (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),
    (["B-PER", "B-PER"], {("PER", 0, 0), ("PER", 1, 1)}),
    (["O", "I-PER", "I-PER"], {("PER", 1, 2)}),  # conlleval: I- after O opens a span
    (["B-PER", "I-LOC"], {("PER", 0, 0), ("LOC", 1, 1)}),  # a change of type ends one span, starts another
    (["PER", "PER", "O"], {("PER", 0, 1)}),  # no prefix reads as I-
    (["O", "O"], set()),
])
def test_spans_follow_conlleval(tags: list[str], expected: set) -> None:
    assert spans(tags) == expected


def test_entity_scores_match_seqeval_documented_example() -> None:
    # seqeval's README: f1_score(y_true, y_pred) == 0.50
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert entity_scores(gold, pred) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert entity_scores(gold, gold)["f1"] == 1.0
    assert entity_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_trainer_metrics_score_only_the_first_sub_tokens() -> None:
    id2label = {0: "B-PER", 1: "I-PER", 2: "O"}
    labels = np.array([[IGNORE, 0, 1, IGNORE, 2, IGNORE], [IGNORE, 0, 2, IGNORE, IGNORE, IGNORE]])
    predicted = np.array([[2, 0, 1, 0, 2, 2], [1, 0, 0, 2, 2, 2]])  # wrong only on [1, 2] among scored positions
    logits = np.eye(3)[predicted]
    metrics = metrics_for(id2label)(SimpleNamespace(predictions=logits, label_ids=labels))
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    # gold spans: PER 0-1 (row 0), PER 0 (row 1); predicted: PER 0-1, PER 0, PER 1 (row 1)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == 1.0
    assert metrics["f1"] == pytest.approx(0.8)
