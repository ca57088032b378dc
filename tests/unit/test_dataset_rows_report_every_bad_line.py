import json
from pathlib import Path

import pytest

from api.datasets.examples import examples_iter


def problems(tmp_path: Path, content: bytes, fmt: str = "jsonl", task: str = "classification") -> list[dict]:
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(content)
    found = []
    for _, item in examples_iter(path, fmt, task):
        if isinstance(item, list):
            found.extend(p.as_dict() for p in item)
    return found


def good(tmp_path: Path, content: bytes, fmt: str = "jsonl", task: str = "classification") -> list:
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(content)
    return [item for _, item in examples_iter(path, fmt, task) if not isinstance(item, list)]


def test_jsonl_bad_lines_are_reported_with_line_and_field(tmp_path: Path) -> None:
    content = b"\n".join([
        json.dumps({"text": "fine", "label": "a"}).encode(),
        b'{"text": "unterminated',
        b"[1, 2]",
        json.dumps({"label": "a"}).encode(),
        json.dumps({"text": "   ", "label": "a"}).encode(),
        json.dumps({"text": "x", "label": True}).encode(),
        b'{"text": "caf\xe9", "label": "b"}',
        b"",
        json.dumps({"text": "also fine", "label": 2}).encode(),
    ]) + b"\n"
    found = problems(tmp_path, content)
    assert [(p["line"], p["field"]) for p in found] == [
        (2, None), (3, None), (4, "text"), (5, "text"), (6, "label"), (7, None)]
    assert "invalid JSON" in found[0]["message"]
    assert "expected a JSON object" in found[1]["message"]
    assert "missing field 'text'" in found[2]["message"]
    assert "empty 'text'" in found[3]["message"]
    assert "UTF-8" in found[5]["message"]
    assert [e.label for e in good(tmp_path, content)] == ["a", "2"]


def test_csv_reports_missing_column_and_wrong_field_count(tmp_path: Path) -> None:
    content = b'text,label\n"hello, world",pos\nonly-one-field\n"",neg\n'
    found = problems(tmp_path, content, "csv")
    assert [(p["line"], p["field"]) for p in found] == [(3, None), (4, "text")]
    assert "1 fields, the header has 2" in found[0]["message"]

    found = problems(tmp_path, b"sentence,label\nhi,pos\n", "csv")
    assert found[0]["line"] == 2 and found[0]["field"] == "text"
    assert "found: ['label', 'sentence']" in found[0]["message"]


def test_tsv_counts_physical_lines_and_keeps_quotes(tmp_path: Path) -> None:
    content = b'text\tlabel\nsays "hi" twice\tpos\n\nno label here\t\n'
    found = problems(tmp_path, content, "tsv")
    assert found == [{"line": 4, "field": "label", "message": "empty 'label'"}]
    assert good(tmp_path, content, "tsv")[0].text == 'says "hi" twice'


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "no 'assistant' message"),
        ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
         "messages[0].content", "empty"),
        ({"messages": []}, "messages", "non-empty list"),
        ({"prompt": "q"}, "completion", "missing field 'completion'"),
        ({"question": "q"}, "messages", "needs 'prompt' and 'completion', or 'messages'"),
    ],
)
def test_sft_rows_name_the_bad_field(tmp_path: Path, row: dict, field: str, fragment: str) -> None:
    found = problems(tmp_path, json.dumps(row).encode() + b"\n", task="sft")
    assert len(found) == 1
    assert found[0]["line"] == 1 and found[0]["field"] == field and fragment in found[0]["message"]


def test_sft_accepts_prompt_completion_and_chat(tmp_path: Path) -> None:
    content = (json.dumps({"prompt": "2+2?", "completion": "4"}) + "\n" + json.dumps(
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]}) + "\n").encode()
    examples = good(tmp_path, content, task="sft")
    assert examples[0].messages == (("user", "2+2?"), ("assistant", "4"))
    assert examples[1].messages[-1] == ("assistant", "hello")
