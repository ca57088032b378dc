"""Turning examples into token ids: one encoding, used for dataset stats, training and evaluation.

SFT uses a plain role-tagged format (PROMPT_FORMAT below), and computes loss on assistant
content only: every other token's label is -100."""

from collections.abc import Sequence
from typing import Any

from api.datasets.examples import Example

PROMPT_FORMAT = "foundry-chat-v1"
IGNORE = -100


def role_header(role: str) -> str:
    return f"<|{role}|>\n"


def sft_prompt(messages: Sequence[tuple[str, str]]) -> str:
    """The text a model trained here expects before its answer (for inference)."""
    return "".join(role_header(role) + content + "\n" for role, content in messages) + role_header("assistant")


def sft_encode(tokenizer: Any, example: Example, max_length: int) -> dict[str, list[int]]:
    ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels: list[int] = [IGNORE] * len(ids)
    for role, content in example.messages:
        header = tokenizer.encode(role_header(role), add_special_tokens=False)
        body = tokenizer.encode(content + "\n", add_special_tokens=False)
        ids += header + body
        labels += [IGNORE] * len(header) + (body if role == "assistant" else [IGNORE] * len(body))
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is not None:
        ids.append(eos)
        labels.append(eos if example.messages[-1][0] == "assistant" else IGNORE)
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def classification_encode_batch(
    tokenizer: Any, examples: Sequence[Example], max_length: int, label2id: dict[str, int] | None
) -> list[dict[str, Any]]:
    enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
    rows = []
    for i, example in enumerate(examples):
        row = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
        if label2id is not None:
            row["labels"] = label2id[example.label]
        rows.append(row)
    return rows


def encode_all(
    tokenizer: Any, task: str, examples: Sequence[Example], max_length: int,
    label2id: dict[str, int] | None = None, batch: int = 1000,
) -> list[dict[str, Any]]:
    if task == "sft":
        return [sft_encode(tokenizer, e, max_length) for e in examples]
    encode_batch = classification_encode_batch
    if task == "token-classification":
        from workers.training.tokens import tokens_encode_batch as encode_batch
    rows: list[dict[str, Any]] = []
    for start in range(0, len(examples), batch):
        rows += encode_batch(tokenizer, examples[start : start + batch], max_length, label2id)
    return rows


def labels_for(task: str, examples: Sequence[Example]) -> list[str]:
    """The class names a task's head predicts, in id order: row labels, or token tags; none for sft."""
    if task == "classification":
        return labels_order({e.label for e in examples})
    if task == "token-classification":
        return labels_order({tag for e in examples for tag in e.tags})
    return []


def labels_order(labels: set[str]) -> list[str]:
    """Integers in numeric order, else lexical: label id i is the i-th of these."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)
