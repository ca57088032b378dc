"""Token classification (NER-style tagging): encoding words to sub-tokens, and entity-level evaluation.

Encoding: each row's words go through the tokenizer with is_split_into_words, and a word's tag is the label of
its first sub-token; later sub-tokens and special tokens get IGNORE (-100), so the loss and every metric count
each word once. Words cut off by max_length are simply not scored.

Evaluation: token accuracy over those first sub-tokens, and entity-level precision, recall and F1 over spans
decoded from BIO/IOB2 tags with the conlleval rules (the same as seqeval's default mode):
- a span starts at B-X, or at I-X when the previous tag is not of type X (I- after O opens a span, as conlleval);
- a span ends before O, before a B-, or before a tag of another type;
- a tag with no prefix ("PER") is read as I-PER; "O" is outside.
A predicted span counts only when its start, end and type all equal a gold span's. Written here rather than
taking seqeval: seqeval ships no wheel and pulls in scikit-learn, for about thirty lines of span matching."""

from collections.abc import Sequence
from typing import Any

from api.datasets.examples import Example

IGNORE = -100
Span = tuple[str, int, int]  # (type, first word, last word), inclusive


def tokens_encode_batch(tokenizer: Any, examples: Sequence[Example], max_length: int,
                        label2id: dict[str, int] | None) -> list[dict[str, Any]]:
    """Rows of input_ids, attention_mask and (when label2id is given) one label per sub-token.

    Args:
        examples: token-classification examples (tokens and tags of equal length).
        label2id: tag -> class id; None encodes without labels (dataset stats, prediction).
    """
    enc = tokenizer([list(e.tokens) for e in examples], is_split_into_words=True, truncation=True,
                    max_length=max_length)
    rows = []
    for i, example in enumerate(examples):
        row: dict[str, Any] = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
        if label2id is not None:
            row["labels"] = first_subtoken_labels(enc.word_ids(i), [label2id[t] for t in example.tags])
        rows.append(row)
    return rows


def first_subtoken_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """The word's label on its first sub-token, IGNORE on the rest and on special tokens."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(word_labels[word] if word is not None and word != previous else IGNORE)
        previous = word
    return labels


def _split(tag: str) -> tuple[str, str]:
    """("B", "PER") from "B-PER"; ("O", "") for O; a bare "PER" is ("I", "PER")."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if sep and prefix in ("B", "I"):
        return prefix, kind
    return "I", tag


def spans(tags: Sequence[str]) -> set[Span]:
    """The entity spans of one row of BIO/IOB2 tags (conlleval's chunk rules)."""
    found: set[Span] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, tag_kind = _split(tag)
        ends = kind and (prefix in ("O", "B") or tag_kind != kind)
        if ends:
            found.add((kind, start, i - 1))
            start, kind = -1, ""
        if prefix != "O" and not kind:
            start, kind = i, tag_kind
    return found


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over rows of tags (0.0 where undefined)."""
    hits = n_gold = n_pred = 0
    for gold_row, pred_row in zip(gold, predicted, strict=True):
        g, p = spans(gold_row), spans(pred_row)
        hits += len(g & p)
        n_gold += len(g)
        n_pred += len(p)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def metrics_for(id2label: dict[int, str]) -> Any:
    """A Trainer compute_metrics: token accuracy (as `accuracy`, so it fills the job's eval-accuracy curve) and
    entity precision, recall and F1, over the first sub-token of every word."""

    def compute(prediction: Any) -> dict[str, float]:
        import numpy as np

        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted, labels = np.argmax(logits, -1), prediction.label_ids
        scored = labels != IGNORE
        gold_rows = [[id2label[int(t)] for t in row[mask]] for row, mask in zip(labels, scored, strict=True)]
        pred_rows = [[id2label[int(t)] for t in row[mask]] for row, mask in zip(predicted, scored, strict=True)]
        accuracy = float((predicted[scored] == labels[scored]).mean()) if scored.any() else 0.0
        return {"accuracy": accuracy, **entity_scores(gold_rows, pred_rows)}

    return compute
