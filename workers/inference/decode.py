"""Generation for rows of different LoRA adapters of one base model, decoded together: prompts left-padded into one
prefill, then one forward pass per decode step for every row still running (KV cache, per-row positions and
attention mask), each row through its own adapter (batched_lora.py). Each row picks its token with its own
settings (greedy, or temperature and top-p with its own seeded generator), hears about every new token at once
(streaming) and stops on its own: end-of-sequence, a stop string, or its max_tokens; finished rows leave the batch
(the cache, the mask and the gathered LoRA weights keep only the rows still running)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DecodeRow:
    prompt: list[int]
    adapter: str  # the adapter's name inside the PeftModel
    max_tokens: int
    on_token: Callable[[list[int]], bool]  # the new ids so far -> True when a stop string was reached
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    generator: torch.Generator | None = None
    on_done: Callable[["DecodeRow"], None] | None = None  # called once, as soon as the row is finished
    new: list[int] = field(default_factory=list)
    stopped: bool = False  # by end-of-sequence or a stop string (else: max_tokens)


def decode_batch(model: Any, rows: list[DecodeRow], *, eos: int | None, pad: int) -> None:
    """Run every row to its end, filling row.new and row.stopped.

    Args:
        model: a PeftModel for causal LM holding every row's adapter (plain LoRA).
        rows: the prompts (token ids, without padding), their adapters and settings.
        eos: the end-of-sequence id, or None.
        pad: the id written in the padding on the left (masked out).
    """
    from transformers import DynamicCache

    from workers.inference.batched_lora import LoraRows, batched_lora

    width = max(len(row.prompt) for row in rows)
    ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows])
    mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    names = [row.adapter for row in rows]
    active = list(range(len(rows)))
    cache = DynamicCache()
    with torch.no_grad(), batched_lora(model, LoraRows(names)) as lora:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1, adapter_names=names).logits[:, -1]
        last = positions[:, -1]
        while True:
            tokens = _pick(logits, [rows[i] for i in active])
            keep = [j for j, i in enumerate(active) if not _advance(rows[i], int(tokens[j]), eos)]
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                lora.restrict(index)
                mask, last, tokens = mask[index], last[index], tokens[index]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            last = last + 1
            logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=last[:, None],
                           past_key_values=cache, use_cache=True, adapter_names=lora.names).logits[:, -1]


def _advance(row: DecodeRow, token: int, eos: int | None) -> bool:
    """Add the token to the row; True when the row is finished."""
    row.new.append(token)
    row.stopped = (eos is not None and token == eos) or row.on_token(row.new)
    done = row.stopped or len(row.new) >= row.max_tokens
    if done and row.on_done is not None:
        row.on_done(row)
    return done


def _pick(logits: torch.Tensor, rows: list[DecodeRow]) -> torch.Tensor:
    """The next token of each row: argmax, or a draw after temperature and top-p (nucleus) for sampling rows."""
    tokens = logits.argmax(-1)
    for j, row in enumerate(rows):
        if row.temperature > 0:
            tokens[j] = _sample(logits[j].float() / row.temperature, row.top_p, row.generator)
    return tokens


def _sample(scores: torch.Tensor, top_p: float, generator: torch.Generator | None) -> int:
    probabilities = scores.softmax(-1)
    if top_p < 1:
        ordered, order = probabilities.sort(descending=True)
        outside = ordered.cumsum(-1) - ordered > top_p  # tokens past the nucleus (the top one always stays)
        probabilities = probabilities.clone()
        probabilities[order[outside]] = 0
    return int(torch.multinomial(probabilities, 1, generator=generator))
