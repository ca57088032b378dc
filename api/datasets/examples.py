"""What a valid row looks like for each task, and the normalised example it becomes.

Shared by dataset validation (which reports every problem) and training (which reads only
files that validated)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.datasets.formats import Problem, records_iter

ROLES = ("system", "user", "assistant")
TASKS = ("classification", "sft", "token-classification")
TAG_FIELDS = ("labels", "tags")  # token-classification: either name, one per row
MAX_TOKENS = 4096  # words per token-classification row


@dataclass(frozen=True)
class Example:
    text: str = ""  # classification input
    label: str = ""  # classification label, always a string
    messages: tuple[tuple[str, str], ...] = ()  # sft: (role, content); loss on assistant turns
    tokens: tuple[str, ...] = ()  # token-classification: the words
    tags: tuple[str, ...] = ()  # token-classification: one tag per word (BIO/IOB2, e.g. B-ORG, I-ORG, O)


def _text(record: dict[str, Any], key: str, line: int, problems: list[Problem]) -> str | None:
    if key not in record:
        problems.append(Problem(line, key, f"missing field {key!r} (found: {sorted(record)})"))
        return None
    value = record[key]
    if not isinstance(value, str):
        problems.append(Problem(line, key, f"{key!r} must be a string, got {type(value).__name__}"))
        return None
    if not value.strip():
        problems.append(Problem(line, key, f"empty {key!r}"))
        return None
    return value


def _classification(record: dict[str, Any], line: int, problems: list[Problem]) -> Example | None:
    text = _text(record, "text", line, problems)
    if "label" not in record:
        problems.append(Problem(line, "label", f"missing field 'label' (found: {sorted(record)})"))
        return None
    label = record["label"]
    if isinstance(label, bool) or not isinstance(label, str | int):
        problems.append(Problem(line, "label", f"'label' must be a string or an integer, got {label!r}"))
        return None
    label = str(label).strip()
    if not label:
        problems.append(Problem(line, "label", "empty 'label'"))
        return None
    return Example(text=text, label=label) if text is not None else None


def _messages(record: dict[str, Any], line: int, problems: list[Problem]) -> Example | None:
    raw = record["messages"]
    if isinstance(raw, str):  # CSV/TSV carry messages as a JSON string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(Problem(line, "messages", f"'messages' is not valid JSON: {exc.msg}"))
            return None
        except RecursionError:
            problems.append(Problem(line, "messages", "'messages' is nested too deeply"))
            return None
    if not isinstance(raw, list) or not raw:
        problems.append(Problem(line, "messages", "'messages' must be a non-empty list"))
        return None
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(Problem(line, where, "each message must be an object with 'role' and 'content'"))
            return None
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(Problem(line, f"{where}.role", f"unknown role {role!r}; use one of {list(ROLES)}"))
            return None
        if not isinstance(content, str) or not content.strip():
            problems.append(Problem(line, f"{where}.content", "empty or non-string 'content'"))
            return None
        turns.append((role, content))
    if not any(role == "assistant" for role, _ in turns):
        problems.append(Problem(line, "messages", "no 'assistant' message: nothing to learn from"))
        return None
    return Example(messages=tuple(turns))


def _sft(record: dict[str, Any], line: int, problems: list[Problem]) -> Example | None:
    if "messages" in record:
        return _messages(record, line, problems)
    if "prompt" not in record and "completion" not in record:
        problems.append(
            Problem(line, "messages", f"needs 'prompt' and 'completion', or 'messages' (found: {sorted(record)})")
        )
        return None
    prompt = _text(record, "prompt", line, problems)
    completion = _text(record, "completion", line, problems)
    if prompt is None or completion is None:
        return None
    return Example(messages=(("user", prompt), ("assistant", completion)))


def _string_list(record: dict[str, Any], key: str, line: int, problems: list[Problem]) -> list[str] | None:
    """A non-empty list of non-empty strings; in CSV/TSV a JSON string holding one."""
    value = record[key]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            problems.append(Problem(line, key, f"{key!r} is not a JSON list: {exc.msg}"))
            return None
        except RecursionError:
            problems.append(Problem(line, key, f"{key!r} is nested too deeply"))
            return None
    if not isinstance(value, list) or not value:
        problems.append(Problem(line, key, f"{key!r} must be a non-empty list of strings"))
        return None
    if len(value) > MAX_TOKENS:
        problems.append(Problem(line, key, f"{key!r} has {len(value)} items; at most {MAX_TOKENS}"))
        return None
    for i, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(Problem(line, f"{key}[{i}]", f"must be a string, got {type(item).__name__}"))
            return None
        if not item.strip():
            problems.append(Problem(line, f"{key}[{i}]", "empty string"))
            return None
    return value


def _token_classification(record: dict[str, Any], line: int, problems: list[Problem]) -> Example | None:
    present = [key for key in TAG_FIELDS if key in record]
    if "tokens" not in record:
        problems.append(Problem(line, "tokens", f"missing field 'tokens' (found: {sorted(record)})"))
        return None
    if len(present) != 1:
        problems.append(Problem(line, "labels", f"needs one of 'labels' or 'tags', one per token (found: "
                                f"{sorted(record)})"))
        return None
    tokens = _string_list(record, "tokens", line, problems)
    tags = _string_list(record, present[0], line, problems)
    if tokens is None or tags is None:
        return None
    if len(tokens) != len(tags):
        problems.append(Problem(line, present[0], f"{len(tags)} {present[0]} for {len(tokens)} tokens; "
                                "need one per token"))
        return None
    return Example(tokens=tuple(tokens), tags=tuple(t.strip() for t in tags))


CHECKS = {"classification": _classification, "sft": _sft, "token-classification": _token_classification}


def examples_iter(path: Path, fmt: str, task: str, *, max_line_bytes: int = 1024 * 1024) -> Iterator[
        tuple[int, Example | list[Problem]]]:
    """Yield (line, Example) for good rows and (line, [Problem, ...]) for bad ones."""
    check = CHECKS[task]
    for line, record in records_iter(path, fmt, max_line_bytes=max_line_bytes):
        if isinstance(record, Problem):
            yield line, [record]
            continue
        problems: list[Problem] = []
        example = check(record, line, problems)
        yield line, (problems if problems or example is None else example)


def examples_load(path: Path, fmt: str, task: str, *, max_line_bytes: int = 1024 * 1024) -> list[Example]:
    """Every example of a file that validated; a bad row here means the file changed under us."""
    examples = []
    for line, item in examples_iter(path, fmt, task, max_line_bytes=max_line_bytes):
        if isinstance(item, list):
            raise ValueError(f"line {line}: {item[0].message}")
        examples.append(item)
    return examples
