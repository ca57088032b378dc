"""What a job will cost before it starts: tokens, optimizer steps, peak memory and time on this worker.

Time comes from a calibration cached per base model, device, thread count and precision under
VAR_DIR/cache/calibration/ (JSON): a few LoRA training steps on random token ids at two batch shapes,
fitted to `seconds per step = per_token x tokens in the batch + per_step`. The job's time is then
`per_token x padded tokens + per_step x steps`, with the padded tokens of length-grouped batches
taken as the real tokens plus 10% (the sampler leaves about 8% padding on SST-2).
"""

import functools
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache

from workers.base_models import base_model_get, model_load, tokenizer_load
from workers.training import engine
from workers.training.hyperparameters import Hyperparameters

log = logging.getLogger(__name__)

PADDING_ALLOWANCE = 1.10
CALIBRATION_SHAPES = ((8, 32), (16, 64))  # (rows, tokens per row) of the two measured batch shapes
CALIBRATION_STEPS = 4


def mean_length(token_lengths: dict[str, int], max_seq_length: int) -> float:
    """The mean of the truncated lengths, by the trapezoid rule over the quantile function through the
    percentiles the dataset report holds (p50, p90, p95, p99, max); the 0th percentile is taken as p50 / 2."""
    points = [(0.0, token_lengths["p50"] / 2), (0.5, token_lengths["p50"]), (0.9, token_lengths["p90"]),
              (0.95, token_lengths["p95"]), (0.99, token_lengths["p99"]), (1.0, token_lengths["max"])]
    capped = [(q, min(v, max_seq_length)) for q, v in points]
    return sum((q1 - q0) * (v0 + v1) / 2 for (q0, v0), (q1, v1) in zip(capped, capped[1:], strict=False))


_SHAPE_LOCK = threading.Lock()  # transformers' lazy imports are not safe from several threads at once


def model_shape(base_model: str, task: str) -> dict[str, int]:
    """{"params", "hidden", "layers", "vocab"} of a catalogue model, read from its config and built on the meta
    device (no weights are loaded or allocated), so the web process can estimate memory before a job runs."""
    with _SHAPE_LOCK:
        return _model_shape(base_model, task)


@functools.cache
def _model_shape(base_model: str, task: str) -> dict[str, int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from workers.base_models import _tiny_config

    entry = base_model_get(base_model)
    if entry.tiny:
        config = _tiny_config(entry, len(tokenizer_load(entry)))
    else:
        config = AutoConfig.from_pretrained(entry.source, revision=entry.revision, trust_remote_code=False)
    auto = AutoModelForCausalLM if task == "sft" else AutoModelForSequenceClassification
    with torch.device("meta"):
        model = auto.from_config(config)
    return {"params": sum(p.numel() for p in model.parameters()), "hidden": config.hidden_size,
            "layers": config.num_hidden_layers, "vocab": config.vocab_size}


def warm() -> None:
    """Import the model code and learn the shapes of the catalogue's local models (tiny ones, and any whose config
    is on disk) before the first request, so that no client waits seconds for the first submission's imports."""
    from workers.base_models import catalogue

    for model_id, entry in catalogue().items():
        if not (entry.tiny or os.path.isdir(entry.source)):
            continue  # a Hub model's config may need the network: learned on its first job instead
        for task in ("classification", "sft"):
            try:
                model_shape(model_id, task)
            except Exception:  # a model that cannot do a task, or an unreadable folder: its job will say why
                log.debug("no %s shape for %s", task, model_id, exc_info=True)


def _calibration_path(base_model: str, device: str) -> Path:
    bf16 = "bf16" if engine.bf16_worthwhile(device) else "fp32"
    name = f"{base_model}-{device}-{engine.threads_configure()}t-{bf16}.json"
    return Path(settings.VAR_DIR) / "cache" / "calibration" / name


def calibration_known(base_model: str, device: str = "cpu") -> dict[str, Any] | None:
    """The calibration a worker of this kind last published in the shared cache, for the web process to quote
    times before a job runs. Reads only: nothing is measured here (the web must not benchmark matmuls)."""
    shared = cache.get(f"calibration:{base_model}-{device}")
    return dict(shared) if shared else None


@functools.cache
def calibration(base_model: str, device: str = "cpu") -> dict[str, Any]:
    """{"per_token": s, "per_step": s, "params": n, "hidden": h, "layers": l, "vocab": v, "bf16": b} for this
    worker, measured once and cached on disk; published in the shared cache for calibration_known."""
    path = _calibration_path(base_model, device)
    if path.exists():
        result = dict(json.loads(path.read_text()))
    else:
        result = _calibrate(base_model, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    result["bf16"] = engine.bf16_worthwhile(device)
    cache.set(f"calibration:{base_model}-{device}", result, timeout=None)
    return result


def _calibrate(base_model: str, device: str) -> dict[str, float]:
    import torch

    from workers.methods.registry import config_resolve, method_get

    entry = base_model_get(base_model)
    task = "sft" if "sft" in entry.tasks and "classification" not in entry.tasks else "classification"
    tokenizer = tokenizer_load(entry)
    lora = method_get("lora")
    model = lora.build(model_load(entry, task=task, vocab_size=len(tokenizer), labels=["0", "1"]),
                       config_resolve(lora.config, {}, param="method_config"), task=task).to(device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    timings = []
    for rows, length in CALIBRATION_SHAPES:
        ids = torch.randint(5, min(len(tokenizer), 1000), (rows, length), generator=generator).to(device)
        labels = ids if task == "sft" else torch.zeros(rows, dtype=torch.long, device=device)
        best = math.inf
        for i in range(CALIBRATION_STEPS + 1):
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=engine.bf16_worthwhile(device)):
                loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if i:  # the first step warms up allocators and kernels
                best = min(best, time.perf_counter() - start)
        timings.append((rows * length, best))
    (t0, s0), (t1, s1) = timings
    per_token = max((s1 - s0) / (t1 - t0), 1e-9)
    config = model.get_base_model().config
    return {"per_token": per_token, "per_step": max(s0 - per_token * t0, 0.0),
            "params": sum(p.numel() for p in model.parameters()),
            "hidden": config.hidden_size, "layers": config.num_hidden_layers, "vocab": config.vocab_size,
            "measured_at": time.time()}


def job_estimate(*, stats: dict[str, Any], base_model: str, task: str, method: str,
                 hyperparameters: dict[str, Any], trainable_parameters: int | None = None,
                 device: str | None = None, measure: bool = True) -> dict[str, Any]:
    """Tokens, optimizer steps, peak memory (bytes) and seconds of training for a job on this worker.

    Args:
        stats: Dataset.report["stats"] of the training set: rows and token_lengths percentiles.
        trainable_parameters: when known (after build); else 2% of the base, a LoRA-sized guess.
        measure: calibrate now when no calibration is cached; False returns seconds None instead (memory needs
            no calibration: it comes from the model's config).
    """
    hp = Hyperparameters(**hyperparameters)
    device = device or engine.device_pick()
    rows = int(stats["rows"])
    lengths = stats.get("token_lengths") or {"p50": hp.max_seq_length, "p90": hp.max_seq_length,
                                             "p95": hp.max_seq_length, "p99": hp.max_seq_length,
                                             "max": hp.max_seq_length}
    mean = mean_length(lengths, hp.max_seq_length)
    tokens = math.ceil(rows * mean * hp.epochs)
    steps = math.ceil(hp.epochs * math.ceil(rows / hp.batch_size))
    cal = calibration(base_model, device) if measure else calibration_known(base_model, device)
    seconds = None
    if cal is not None:
        seconds = round(cal["per_token"] * tokens * PADDING_ALLOWANCE + cal["per_step"] * steps, 1)
    # training stops at max_train_seconds (and publishes the adapter as it is), so a job takes no longer
    capped = bool(seconds is not None and hp.max_train_seconds and seconds > hp.max_train_seconds)
    if capped:
        seconds = float(hp.max_train_seconds)  # type: ignore[arg-type]
    shape = model_shape(base_model, task)
    longest = min(lengths["max"], hp.max_seq_length)
    # classification: the worst batch is batch_size rows of the longest length; sft batches are packed,
    # so a batch holds its rows' own tokens (1.5 x the mean allows for a batch of long rows)
    batch_tokens = hp.batch_size * (longest if task != "sft" else min(1.5 * mean, longest))
    trainable = trainable_parameters or int(0.02 * shape["params"])
    act_bytes = 2 if cal and cal.get("bf16") else 4  # fp32 (the upper bound) until a worker says otherwise
    # per layer ~17 activations of width h per token kept for backward (Korthikanti et al. 2022, 34 bytes in
    # 16-bit), and the logits with their gradient for sft
    activations = batch_tokens * shape["layers"] * shape["hidden"] * 17 * act_bytes
    logits = batch_tokens * shape["vocab"] * 4 * 2 if task == "sft" else 0
    memory = int(shape["params"] * 4 + trainable * 4 * 3 + activations + logits)
    return {"tokens": tokens, "steps": steps, "mean_tokens_per_row": round(mean, 1), "peak_memory_bytes": memory,
            "seconds": seconds, "device": device, "method": method,
            "basis": ("no calibration yet" if not cal else "calibrated per_token x tokens x 1.10 + per_step x steps"
                      + (", capped at max_train_seconds (training stops there)" if capped else ""))}
