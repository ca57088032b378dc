"""Hostile or broken dataset files: each is refused (400 at upload, or `invalid` after validation)
with the file, line and field named."""

import json

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from tests.conftest import dataset_ready, upload

GOOD = [json.dumps({"text": f"row {i}", "label": "a" if i % 2 else "b"}) for i in range(4)]


def lines(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


CORPUS = [
    ("invalid UTF-8", b'{"text": "caf\xe9", "label": "a"}\n' + lines(*GOOD), "jsonl", "classification",
     (1, None, "UTF-8")),
    ("deeply nested JSON", lines(*GOOD, "[" * 100_000 + "]" * 100_000), "jsonl", "classification",
     (5, None, "JSON")),
    ("label is a list", lines(*GOOD, json.dumps({"text": "x", "label": ["a", "b"]})), "jsonl", "classification",
     (5, "label", "string or an integer")),
    ("missing column", b"text,label\nhello,a\nworld\n", "csv", "classification", (3, None, "1 fields")),
    ("wrong columns", b"sentence,label\nhello,a\n", "csv", "classification", (2, "text", "missing field 'text'")),
    ("bad CSV quote", b'text,label\nhello,a\n"unclosed,b\n', "csv", "classification", (3, None, "")),
    ("unknown role", lines(json.dumps({"messages": [{"role": "wizard", "content": "hi"}]})), "jsonl", "sft",
     (1, "messages[0].role", "unknown role")),
    ("no assistant turn", lines(json.dumps({"messages": [{"role": "user", "content": "hi"}]})), "jsonl", "sft",
     (1, "messages", "no 'assistant'")),
    ("a line over the limit", lines(*GOOD[:2], json.dumps({"text": "x" * 5000, "label": "a"}), *GOOD[2:]), "jsonl",
     "classification", (3, None, "longer than 1024 bytes")),
]


@pytest.mark.parametrize(("case", "content", "fmt", "task", "expected"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_file_is_invalid_with_file_line_and_field(worker: object, alice: APIClient, case: str, content: bytes,
                                                      fmt: str, task: str, expected: tuple) -> None:
    with override_settings(DATASET_MAX_LINE_BYTES=1024 if case == "a line over the limit" else 1024 * 1024):
        dataset = dataset_ready(alice, content, filename=f"{case.replace(' ', '-')}.{fmt}", task=task)
    assert dataset["status"] == "invalid", dataset["report"]
    report = dataset["report"]
    assert report["file"] == dataset["filename"]
    line, field, fragment = expected
    assert any(e["line"] == line and e["field"] == field and fragment in e["message"] for e in report["errors"]), \
        report["errors"]


def test_bom_and_mixed_line_endings_are_read_not_refused(worker: object, alice: APIClient) -> None:
    content = b"\xef\xbb\xbf" + b"text,label\r\nhello,a\rworld,b\nagain,a\r\n"
    dataset = dataset_ready(alice, content, filename="mixed.csv")
    assert dataset["status"] == "ready", dataset["report"]
    assert dataset["rows"] == 3 and dataset["report"]["stats"]["label_counts"] == {"a": 2, "b": 1}


def test_an_empty_file_is_a_400_naming_the_file(alice: APIClient) -> None:
    response = upload(alice, b"", filename="empty.jsonl")
    assert response.status_code == 400 and response.data["error"]["param"] == "file"
