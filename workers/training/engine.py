"""The training engine a job runs, without the job plumbing: encoding (cached), batching, precision,
threads, the Trainer, and the out-of-memory retry. The runner and bench/train_speed.py both call it.

The fast path, for every task and method:
- batches of similar lengths (Trainer's length-grouped sampler), so little of each batch is padding, taken in
  a random order (length_grouped_shuffled_indices);
- on a CPU with two free cores or more, each batch split between the job's process and a fork of it
  (workers/training/split.py);
- sft rows packed into one padding-free sequence per batch (DataCollatorWithFlattening: position_ids
  restart at every row and the model's mask keeps attention inside each row);
- bf16 autocast where the hardware multiplies bf16 faster than fp32 (measured, not assumed), with the
  frozen weights of linear and embedding layers stored in bf16 for the run (autocast would otherwise
  cast them again at every step); the trainable parameters and their optimizer state stay fp32;
- on CPU, nn.Dropout's mask drawn as 16-bit random integers (a quarter of the generator calls of
  torch's bernoulli_; the drop probability is p to 1/65536): LoRA's dropout on every adapted layer's
  input was a third of the step;
- peft's LoRA layers in one fused forward (lora_linear_fast), attention dropout drawn as int16 masks, and a BERT
  classifier's last layer computed at the one position its pooler reads (_first_token_last_layer);
- one intra-op thread per core no other process is using, measured before training and every 10 s
  during it (a thread on a core another process holds stalls every parallel region);
- token ids cached per dataset sha256, tokenizer and max length, as safetensors.
"""

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from api.datasets.examples import Example
from workers.base_models import BaseModelEntry, base_model_get, model_load, tokenizer_load
from workers.training.data import encode_all, labels_for
from workers.training.hyperparameters import Hyperparameters
from workers.training.split import split_trainer_class

log = logging.getLogger(__name__)

CACHE_FORMAT = "1"
clock = time.monotonic  # the time budget's clock (a test advances it)
PER_TOKEN_LABELS = ("sft", "token-classification")
OOM_MICRO_BATCH_FLOOR = 1


class Rows:
    """A list of encoded rows as a torch-style map dataset."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


# --- hardware -------------------------------------------------------------------------------------------


def device_pick() -> str:
    import torch

    if settings.TRAIN_DEVICE == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(settings.TRAIN_DEVICE)


def threads_nominal() -> int:
    return int(settings.TRAIN_THREADS or len(os.sched_getaffinity(0)))


def threads_configure() -> int:
    """TRAIN_THREADS when set, else one thread per core this process may use (torch's own default
    counts logical CPUs of the whole host in some containers)."""
    import torch

    threads = threads_nominal()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the Trainer's dataloader forks nothing; keep quiet
    return threads


@dataclass(frozen=True)
class CpuSample:
    idle: dict[int, tuple[int, int]]  # cpu -> (idle + iowait [+ nice], total) jiffies since boot
    own: float  # this process's CPU seconds
    wall: float


def cpu_sample(cpus: set[int]) -> CpuSample | None:
    """The host's CPU counters for `cpus` (/proc/stat) and this process's CPU time; None without /proc/stat."""
    idle = {}
    # Time of niced processes (the `nice` column) counts as free for a process that is not niced itself: the
    # scheduler gives such work way (weight 15 against 1024 at nice 19), so training should not shrink for it.
    niced_yield = os.getpriority(os.PRIO_PROCESS, 0) <= 0
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    values = [int(v) for v in fields]
                    free = values[3] + values[4] + (values[1] if niced_yield else 0)
                    idle[int(name[3:])] = (free, sum(values[:8]))
    except OSError:
        return None
    own = os.times()
    return CpuSample(idle, own.user + own.system, time.monotonic())


def cores_free(before: CpuSample, after: CpuSample) -> float:
    """Cores between the samples that no other process used: the idle ones plus those this process used."""
    idle = 0.0
    for cpu, (idle_after, total_after) in after.idle.items():
        idle_before, total_before = before.idle.get(cpu, (idle_after, total_after))
        idle += (idle_after - idle_before) / max(1, total_after - total_before)
    return idle + (after.own - before.own) / max(1e-3, after.wall - before.wall)


def threads_for_load(device: str) -> int:
    """Threads for this run: TRAIN_THREADS when set, else one per core no other process is using (at least
    one), measured over half a second. On a shared host, a thread on a busy core makes every parallel
    region wait for it; ThreadTuner (a callback) measures again while training."""
    import torch

    nominal = threads_configure()
    if settings.TRAIN_THREADS or device != "cpu" or nominal == 1:
        return nominal
    cpus = os.sched_getaffinity(0)
    before = cpu_sample(cpus)
    time.sleep(0.5)
    after = cpu_sample(cpus)
    threads = nominal if before is None or after is None else max(1, min(nominal, round(cores_free(before, after))))
    if threads != torch.get_num_threads():
        log.info("%s of %s cores free; training with %s threads", threads, nominal, threads)
        torch.set_num_threads(threads)
    return threads


def _thread_tuner(nominal: int, every_seconds: float = 10.0) -> Any:
    """A callback that sets torch's threads to the cores free of other processes, every `every_seconds`."""
    import torch
    from transformers import TrainerCallback

    cpus = os.sched_getaffinity(0)

    class ThreadTuner(TrainerCallback):
        last: CpuSample | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.last is None or time.monotonic() - self.last.wall >= every_seconds:
                now = cpu_sample(cpus)
                if self.last is not None and now is not None:
                    threads = max(1, min(nominal, round(cores_free(self.last, now))))
                    if threads != torch.get_num_threads():
                        log.info("step %s: training with %s threads", state.global_step, threads)
                        torch.set_num_threads(threads)
                self.last = now

    return ThreadTuner()


@functools.cache
def matmul_peak(dtype_name: str, size: int = 1024, repeats: int = 12) -> float:
    """Measured FLOP/s of a square matmul in `dtype_name` ("float32" or "bfloat16") on the CPU, best of 3."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


@functools.cache
def bf16_worthwhile(device: str) -> bool:
    """bf16 autocast only where it is supported and, on CPU, measurably faster than fp32: CPUs without
    AVX512-BF16/AMX emulate it, and then it is slower."""
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.info("CPU without bf16 support in oneDNN: training in fp32")
        return False
    ratio = matmul_peak("bfloat16", 512, 8) / matmul_peak("float32", 512, 8)
    log.info("CPU bf16 matmul is %.2fx fp32", ratio)
    return ratio >= 1.3


# --- the fast path: bf16 frozen weights, cheaper dropout ---------------------------------------------------


def _frozen_weights_bf16(model: Any) -> Callable[[], None]:
    """Store the frozen weights of linear and embedding layers in bf16; the returned function puts the fp32
    tensors back. Norms stay fp32 (CPU layer_norm takes bf16 input with fp32 weights, not the reverse)."""
    import torch

    originals: list[tuple[Any, Any]] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            for param in module.parameters(recurse=False):
                if not param.requires_grad and param.dtype == torch.float32:
                    originals.append((param, param.data))
                    param.data = param.data.to(torch.bfloat16)

    def undo() -> None:
        for param, data in originals:
            param.data = data

    return undo


def _input_casts_off(model: Any) -> Callable[[], None]:
    """peft casts each adapter's input to the adapter's fp32 weights, and autocast casts it straight back to
    bf16 for the matmul; with the base in bf16 the first cast is pure cost."""
    layers = [m for m in model.modules() if getattr(m, "cast_input_dtype_enabled", False)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False

    def undo() -> None:
        for layer in layers:
            layer.cast_input_dtype_enabled = True

    return undo


def dropout_mask(shape: Any, p: float, *, dtype: Any, device: Any, scale: float = 1.0) -> Any:
    """A dropout mask of `shape` in `dtype`: 0 with probability p (to 1/65536), else `scale`.

    Drawn as 16-bit integers r, four from each 64-bit draw of torch's generator (a quarter of bernoulli_'s
    generator calls), and made numbers without a boolean tensor in between (on CPU, arithmetic on boolean
    tensors is not vectorised and costs 3-8 times a multiply): with t the threshold, clamping r to [t - 1, t]
    and subtracting t - 1 gives exactly 1 (kept, r >= t) or 0 (dropped), in 16-bit integers, and then one
    conversion, straight to `dtype` (converting first and clamping floats was 15% slower; going through fp32 to
    bf16 was one pass more)."""
    import torch

    threshold = round(p * 65536) - 32768
    if threshold <= -32768 or threshold >= 32768:  # p rounds to 0 or 1: nothing or everything dropped
        return torch.full(shape, scale if threshold <= -32768 else 0.0, dtype=dtype, device=device)
    numel = math.prod(shape)
    bits = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    mask = bits.view(torch.int16)[:numel].view(shape).clamp_(threshold - 1, threshold).sub_(threshold - 1).to(dtype)
    if scale != 1.0:  # in `dtype`: bf16(1) * scale rounds to what fp32 scale rounded to bf16 did
        mask.mul_(scale)
    return mask


def dropout_fast(module: Any, x: Any) -> Any:
    """nn.Dropout's forward with the mask drawn as 16-bit integers, four from each 64-bit draw: the drop
    probability is round(p * 65536) / 65536 and the kept values are scaled by 1 / (1 - p), as torch's."""

    if not module.training or module.p == 0:
        return x
    if module.p == 1:
        return x * 0
    return x * dropout_mask(x.shape, module.p, dtype=x.dtype, device=x.device, scale=1.0 / (1.0 - module.p))


def _dropout_fast_on(model: Any) -> Callable[[], None]:
    import torch

    layers = [m for m in model.modules() if type(m) is torch.nn.Dropout and m.p > 0]
    for layer in layers:
        layer.forward = functools.partial(dropout_fast, layer)  # type: ignore[method-assign]

    def undo() -> None:
        for layer in layers:
            del layer.forward

    return undo


def lora_linear_fast(layer: Any, memo: dict[str, Any], x: Any, *args: Any, **kwargs: Any) -> Any:
    """peft's lora.Linear forward for the plain case (adapters on and unmerged, one active adapter without a
    variant such as DoRA, no bias on B), in fewer passes over the activations, the same function:

        y = base(x) + s * B A dropout(x)  =  addmm(base(x), A (x * m), B^T, alpha = s / (1 - p))

    - under autocast, x is cast once and shared by the base layer and the adapter (autocast casts it for each),
      and by the next layer called on the same tensor (query, key and value read one hidden state);
    - dropout is x times a 0/1 mask m (dropout_mask), its 1 / (1 - p) folded into the scale;
    - the scale and the sum are addmm's alpha and beta, two passes fewer, in place on a Linear's output.
    Anything else goes to peft's own forward. `memo` holds the last cast (the fast path's, cleared on exit)."""
    import torch
    from torch.nn import Dropout, Identity

    names = layer.active_adapters
    name = names[0] if len(names) == 1 else None
    dropout = layer.lora_dropout[name] if name in layer.lora_dropout else None
    if (args or kwargs or layer.disable_adapters or layer.merged or name not in layer.lora_A
            or name in layer.lora_variant or layer.lora_B[name].bias is not None
            or type(dropout) not in (Dropout, Identity)):
        return type(layer).forward(layer, x, *args, **kwargs)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        if "x" in memo and memo["x"] is x and memo["version"] == x._version:
            x = memo["cast"]
        else:
            cast = x.to(torch.get_autocast_dtype(device))
            memo.update(x=x, version=x._version, cast=cast)
            x = cast
    elif x.dtype != layer.lora_A[name].weight.dtype:
        return type(layer).forward(layer, x, *args, **kwargs)
    shape = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])  # 2-D, so that the adapter's addmm_ below is in place on the output itself
    result = layer.base_layer(x)  # (on a view of it, autograd would copy the whole output back in backward)
    p = dropout.p if layer.training and isinstance(dropout, Dropout) else 0.0
    if p >= 1.0:
        return result.view(*shape, -1)
    if p > 0.0:
        x = x * dropout_mask(x.shape, p, dtype=x.dtype, device=x.device)
    down = torch.nn.functional.linear(x, layer.lora_A[name].weight)
    up = layer.lora_B[name].weight
    alpha = layer.scaling[name] / (1.0 - p)
    if type(layer.base_layer) is torch.nn.Linear:
        # in place: a Linear's backward does not read its output, and one copy of it fewer per layer
        out = result.addmm_(down, up.t().to(result.dtype), alpha=alpha)
    else:
        out = torch.addmm(result, down, up.t(), alpha=alpha)
    return out.view(*shape, -1)


def _lora_fused_on(model: Any) -> Callable[[], None]:
    from peft.tuners.lora.layer import Linear as LoraLinear

    memo: dict[str, Any] = {}
    layers = [m for m in model.modules() if type(m) is LoraLinear]
    for layer in layers:
        layer.forward = functools.partial(lora_linear_fast, layer, memo)  # type: ignore[method-assign]

    def undo() -> None:
        memo.clear()
        for layer in layers:
            del layer.forward

    return undo


ATTENTION_FAST = "foundry_sdpa"
# without dropout, attention_fast_dropout computes attention over at most this many keys; above, torch's sdpa
# (bf16, forward and backward: 2x faster at 128 keys, even at 192, slower at 256)
MANUAL_ATTENTION_MAX_KEYS = 128


def attention_fast_dropout(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                           dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                           **kwargs: Any) -> tuple[Any, None]:
    """transformers' sdpa attention on CPU, computed as three operations when training:

        out = (softmax(q k^T * scale + mask) * m) v / (1 - p)

    - with dropout, m is drawn by dropout_mask instead of bernoulli_ (torch's CPU attention with dropout is its
      math path, and a third of it was drawing the mask);
    - without dropout (m = 1), while gradients are recorded, over at most MANUAL_ATTENTION_MAX_KEYS keys: torch's
      CPU sdpa took 3-7 times as long for forward and backward at SST-2 shapes in bf16 ([5, 12, 46, 32]: 12.3
      against 1.8 ms), 2 times at 128 keys;
    - a causal pattern without a mask gets the causal mask.
    Evaluation without dropout, an accelerator, or anything this does not handle (grouped keys, a bias):
    transformers' own sdpa."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if ((dropout == 0.0 and (not torch.is_grad_enabled() or key.shape[-2] > MANUAL_ATTENTION_MAX_KEYS))
            or query.device.type != "cpu" or getattr(module, "num_key_value_groups", 1) > 1
            or any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux", "sliding_window"))
            or key.shape[-2] != value.shape[-2] or query.dim() != 4):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    elif causal and query.shape[-2] > 1:  # query i (of the last ones) sees the keys up to its own position
        length, keys = query.shape[-2], key.shape[-2]
        above = torch.ones(length, keys, dtype=torch.bool, device=query.device).triu_(keys - length + 1)
        scores = scores.masked_fill(above, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    if dropout > 0.0:
        probs = probs * dropout_mask(probs.shape, dropout, dtype=probs.dtype, device=probs.device,
                                     scale=1.0 / (1.0 - dropout))
    out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), None


def _attention_fast_on(model: Any) -> Callable[[], None]:
    """Models on transformers' sdpa attention run attention_fast_dropout for the duration."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_FAST, attention_fast_dropout)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_FAST, sdpa_mask)
    configs = {id(m.config): m.config for m in model.modules()
               if getattr(getattr(m, "config", None), "_attn_implementation", None) == "sdpa"}
    for config in configs.values():
        config._attn_implementation = ATTENTION_FAST

    def undo() -> None:
        for config in configs.values():
            config._attn_implementation = "sdpa"

    return undo


FIRST_TOKEN_CLASSIFIERS = ("BertForSequenceClassification",)


def _first_token_classifier(model: Any, task: str) -> Any:
    """The BERT backbone of a peft-wrapped FIRST_TOKEN_CLASSIFIERS model, or None."""
    from peft import PeftModel

    if task != "classification" or not isinstance(model, PeftModel):  # the methods written here may mix positions
        return None  # (MixLoRA's load-balancing loss averages over every token of every layer)
    base = model.get_base_model()
    backbone: Any = getattr(base, "base_model", None)
    if type(base).__name__ not in FIRST_TOKEN_CLASSIFIERS or getattr(backbone, "pooler", None) is None:
        return None
    if getattr(backbone.encoder.layer[-1], "add_cross_attention", False):
        return None
    return backbone


def classification_packable(model: Any, task: str) -> bool:
    """Whether a classification batch may be one packed sequence (PackedClassification): a peft-wrapped BERT
    classifier on sdpa attention whose method acts on each position on its own (not prompt learning, whose
    virtual tokens would be shared by every row)."""
    backbone = _first_token_classifier(model, task)
    if backbone is None or getattr(model.active_peft_config, "is_prompt_learning", False):
        return False
    return getattr(backbone.config, "_attn_implementation", None) in ("sdpa", ATTENTION_FAST)


PAD_POSITION = -1  # position id of the padding at the end of a shorter bin (PackedClassification)


class PackedClassification:
    """A classification batch as a few packed sequences ("bins"), with almost no padding: the rows are dealt to
    the bins longest first, each to the bin with the fewest tokens so far, and each bin holds its rows end to end
    (input_ids [bins, T]), position_ids restarting at 0 for each row and PAD_POSITION on the few padding tokens
    that even the bins out; one label per row ([rows], in the order the rows sit in the bins, bin after bin).
    Several bins rather than one sequence: attention within a bin costs its length squared, and one sequence of
    the whole batch cost more than the padding saved. The batch is the same random sample of rows as the plain
    Trainer's (no length grouping, which biased each step towards rows of one length).
    _first_token_last_layer turns the positions into a block-diagonal attention mask (no row attends to another
    or to padding) and hands the pooler each row's first token; the split gives each process whole bins
    (workers/training/split.py)."""

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = pad_token_id

    # A bin holds about LONGEST_PER_BIN of the batch's longest row, and at least MIN_BIN tokens. On SST-2 batches
    # of 32, two longest rows a bin left 1.9% padding but 4.6 times the attention work the rows need (each bin
    # attends all-to-all, then masks); one left 4.2% and 2.3 times, and trained 3-7% faster (README).
    LONGEST_PER_BIN = 1.0
    MIN_BIN = 32

    @classmethod
    def bins_for(cls, lengths: Sequence[int]) -> int:
        """About LONGEST_PER_BIN of the longest row per bin (at least MIN_BIN tokens), at most one bin per row,
        and an even number of them from two on: the split gives each process half the bins, and the bins are of
        about one size."""
        if not lengths:
            return 1
        size = max(cls.LONGEST_PER_BIN * max(lengths), cls.MIN_BIN)
        count = max(1, min(len(lengths), round(sum(lengths) / size)))
        return count - count % 2 if count >= 2 else count

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lengths = [len(f["input_ids"]) for f in features]
        count = self.bins_for(lengths)
        bins: list[list[int]] = [[] for _ in range(count)]
        sizes = [0] * count
        for i in sorted(range(len(features)), key=lambda i: -lengths[i]):
            b = min(range(count), key=lambda b: sizes[b])
            bins[b].append(i)
            sizes[b] += lengths[i]
        width = max(sizes)
        ids = torch.full((count, width), self.pad_token_id, dtype=torch.long)
        positions = torch.full((count, width), PAD_POSITION, dtype=torch.long)
        labels = []
        for b, rows in enumerate(bins):
            at = 0
            for i in sorted(rows):
                n = lengths[i]
                ids[b, at : at + n] = torch.tensor(features[i]["input_ids"])
                positions[b, at : at + n] = torch.arange(n)
                labels.append(features[i]["labels"])
                at += n
        return {"input_ids": ids, "position_ids": positions, "token_type_ids": torch.zeros_like(ids),
                "labels": torch.tensor(labels)}


def packed_mask(positions: Any) -> tuple[Any, Any, Any]:
    """From position_ids [bins, T] (0 at each row's start, PAD_POSITION on padding): the [bins, 1, T, T] boolean
    mask (True: may attend) that keeps each row to itself (a padding token attends to itself alone, so that no
    softmax is empty), a boolean [bins, T] that is True at each row's first token, and the position ids with
    the padding's set to 0 for the embedding lookup."""
    import torch

    starts = positions == 0
    pad = positions == PAD_POSITION
    segment = starts.cumsum(dim=1)
    same = (segment[:, :, None] == segment[:, None, :]) & ~pad[:, None, :] & ~pad[:, :, None]
    eye = torch.eye(positions.shape[1], dtype=torch.bool, device=positions.device)[None]
    mask = same | (eye & pad[:, :, None])
    return mask[:, None], starts, positions.clamp(min=0)


def _first_token_last_layer(model: Any, task: str) -> Callable[[], None] | None:
    """A BERT sequence classifier reads one position of the last layer: its pooler takes hidden_states[:, 0].
    So the last layer's attention output projection, its residual and norm, and its feed-forward block run on
    that position alone (a forward pre-hook slices their input to [:, :1]): the loss and every gradient are
    what they were, and a sixth of minilm-l6's linear-layer work is not done (two thirds of its last layer).
    Its self-attention computes queries, scores and probabilities for those positions alone
    (first_token_self_attention); the other positions' keys and values are still computed: they are attended to.
    A packed batch (PackedClassification: position_ids and no attention mask, where classification_packable)
    gets its block-diagonal mask from a pre-hook on the backbone (packed_mask), and the last layer goes on with
    each row's first token as a row of its own ([rows, 1, width]), which is what the pooler reads.
    None where the model is not one of FIRST_TOKEN_CLASSIFIERS wrapped by peft (whose methods act on each position
    on its own)."""
    import torch

    backbone = _first_token_classifier(model, task)
    if backbone is None:
        return None
    packable = classification_packable(model, task)
    state: dict[str, Any] = {"starts": None}

    def packed(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        positions = kwargs.get("position_ids")
        state["starts"] = None
        if positions is None or kwargs.get("attention_mask") is not None or positions.dim() != 2:
            return None
        mask, state["starts"], kwargs["position_ids"] = packed_mask(positions)
        # additive (0 or the float minimum), made once for every layer: the scores' mask is then an add, whose
        # backward is nothing, where a boolean mask is a masked_fill whose backward clones and fills again
        kwargs["attention_mask"] = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
            ~mask, torch.finfo(torch.float32).min)
        return args, kwargs

    def first_token(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden, residual = args[:2]
        starts = state["starts"]
        if starts is not None:  # a packed batch: each row's first token, row after row
            residual = residual[starts].unsqueeze(1)
            if hidden.shape[:2] != residual.shape[:2]:  # (first_token_self_attention gave these rows already)
                hidden = hidden[starts].unsqueeze(1)
            return (hidden, residual, *args[2:])
        return (hidden[:, :1], residual[:, :1], *args[2:])

    attention = backbone.encoder.layer[-1].attention.self
    handles = [backbone.encoder.layer[-1].attention.output.register_forward_pre_hook(first_token)]
    if packable:
        handles.append(backbone.register_forward_pre_hook(packed, with_kwargs=True))
    if type(attention).__name__ == "BertSelfAttention":
        attention.forward = functools.partial(first_token_self_attention, attention, state)

    def undo() -> None:
        for handle in handles:
            handle.remove()
        attention.__dict__.pop("forward", None)

    return undo


def first_token_self_attention(module: Any, state: dict[str, Any], hidden_states: Any, attention_mask: Any = None,
                               past_key_values: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """BertSelfAttention's forward for the last layer of a first-token classifier (_first_token_last_layer):
    keys and values for every position, but queries, scores and probabilities only for the positions the pooler
    reads. Unpacked: position 0 of each row, out [batch, 1, width]. Packed (state["starts"], [bins, T]): each
    row's first token, out [rows, 1, width] row after row, as hidden[starts]; the queries of a bin are gathered
    into [bins, most rows in a bin], the short bins repeating their first row, whose results are dropped."""
    import torch

    if past_key_values is not None or kwargs.get("output_attentions"):
        return type(module).forward(module, hidden_states, attention_mask, past_key_values, **kwargs)
    batch, length, _ = hidden_states.shape
    heads, size = module.num_attention_heads, module.attention_head_size
    starts = state.get("starts")
    if starts is None:
        picked, at, valid = hidden_states[:, :1], None, None
    else:
        counts = starts.sum(dim=1)
        at = torch.zeros((batch, int(counts.max())), dtype=torch.long, device=starts.device)
        valid = torch.arange(at.shape[1], device=starts.device)[None] < counts[:, None]
        at[valid] = starts.nonzero()[:, 1]  # row-major: bin after bin, positions in order
        picked = hidden_states.gather(1, at[:, :, None].expand(-1, -1, hidden_states.shape[-1]))
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        if at is None:
            attention_mask = attention_mask[:, :, :1]
        else:
            attention_mask = attention_mask.gather(
                2, at[:, None, :, None].expand(-1, attention_mask.shape[1], -1, attention_mask.shape[-1]))
    query = module.query(picked).view(batch, picked.shape[1], heads, size).transpose(1, 2)
    key = module.key(hidden_states).view(batch, length, heads, size).transpose(1, 2)
    value = module.value(hidden_states).view(batch, length, heads, size).transpose(1, 2)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    interface = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)
    out, weights = interface(module, query, key, value, attention_mask,
                             dropout=module.dropout.p if module.training else 0.0, scaling=module.scaling, **kwargs)
    out = out.reshape(batch, picked.shape[1], heads * size)
    if valid is not None:
        out = out[valid].unsqueeze(1)
    return out, weights


@contextlib.contextmanager
def fast_path(model: Any, *, device: str, bf16: bool, task: str | None = None) -> Iterator[list[str]]:
    """Apply the fast path to `model` for the duration; yield the names of what was applied. On exit the
    model is as it came in (fp32 frozen weights, torch's dropout), so that
    saving, evaluation afterwards and the residual methods' conversions see the original base."""
    undo: list[Callable[[], None]] = []
    applied: list[str] = []
    try:
        if bf16:
            undo += [_frozen_weights_bf16(model), _input_casts_off(model)]
            applied.append("frozen_weights_bf16")
        undo.append(_lora_fused_on(model))
        applied.append("lora_fused")
        undo.append(_zero_grad_lean(model))
        first_token = _first_token_last_layer(model, task) if task else None
        if first_token:
            undo.append(first_token)
            applied.append("first_token_last_layer")
        if device == "cpu":
            undo += [_dropout_fast_on(model), _attention_fast_on(model)]
            applied += ["dropout_int16", "attention_dropout_int16"]
        yield applied
    finally:
        for fn in reversed(undo):
            fn()


# --- encoding, cached -----------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    special = json.dumps({"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
                          "sep": tokenizer.sep_token_id, "pad": tokenizer.pad_token_id})
    return hashlib.sha256((spec + special).encode()).hexdigest()[:16]


def _cache_path(sha256: str, tokenizer: Any, task: str, max_length: int, label2id: dict[str, int] | None) -> Path:
    labels = hashlib.sha256(json.dumps(label2id, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{sha256}-{tokenizer_fingerprint(tokenizer)}-{task}-{max_length}-{labels}.safetensors"
    return Path(settings.VAR_DIR) / "cache" / "tokens" / name


def _rows_save(path: Path, rows: list[dict[str, Any]], task: str) -> None:
    import torch
    from safetensors.torch import save_file

    lengths = torch.tensor([len(r["input_ids"]) for r in rows], dtype=torch.int64)
    tensors = {"lengths": lengths,
               "input_ids": torch.tensor([t for r in rows for t in r["input_ids"]], dtype=torch.int64)}
    if task in PER_TOKEN_LABELS:
        tensors["labels"] = torch.tensor([t for r in rows for t in r["labels"]], dtype=torch.int64)
    elif rows and "labels" in rows[0]:
        tensors["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    save_file(tensors, str(partial), metadata={"format": CACHE_FORMAT, "task": task})
    os.replace(partial, path)  # readers see a whole file or none


def _rows_load(path: Path) -> list[dict[str, Any]] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("format") != CACHE_FORMAT:
                return None
            task = fh.metadata()["task"]
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (OSError, ValueError, KeyError):
        log.warning("token cache %s unreadable; encoding again", path)
        return None
    lengths = tensors["lengths"].tolist()
    ids = tensors["input_ids"].split(lengths)
    labels = tensors.get("labels")
    rows: list[dict[str, Any]] = []
    for i, row_ids in enumerate(ids):
        row: dict[str, Any] = {"input_ids": row_ids.tolist(), "attention_mask": [1] * lengths[i]}
        if labels is not None:
            row["labels"] = labels.split(lengths)[i].tolist() if task in PER_TOKEN_LABELS else int(labels[i])
        rows.append(row)
    return rows


def rows_encode(tokenizer: Any, task: str, examples: Sequence[Example], max_length: int,
                label2id: dict[str, int] | None = None, *, sha256: str | None = None) -> list[dict[str, Any]]:
    """Token ids of the examples; cached under VAR_DIR/cache/tokens when the dataset's sha256 is given.

    Args:
        sha256: the content hash of the dataset file the examples came from; None encodes without a cache.
    """
    if sha256 is None or not examples:
        return encode_all(tokenizer, task, examples, max_length, label2id)
    path = _cache_path(sha256, tokenizer, task, max_length, label2id)
    if path.exists():
        rows = _rows_load(path)
        if rows is not None and len(rows) == len(examples):
            return rows
    rows = encode_all(tokenizer, task, examples, max_length, label2id)
    try:
        _rows_save(path, rows, task)
    except OSError:
        log.warning("could not write the token cache %s", path, exc_info=True)
    return rows


# --- batching and the Trainer ---------------------------------------------------------------------------


def collator_build(task: str, tokenizer: Any, *, packed: bool) -> Any:
    """Classification: dynamic padding. sft: packed rows (no padding at all), or padded for calibration."""
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorForTokenClassification,
        DataCollatorWithFlattening,
        DataCollatorWithPadding,
    )

    if task == "classification":
        return DataCollatorWithPadding(tokenizer)
    if task == "token-classification":
        return DataCollatorForTokenClassification(tokenizer)
    if packed:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


def training_args(hp: Hyperparameters, out: Path, *, packed: bool, bf16: bool, evaluate: bool, device: str,
                  micro_batch: int, accumulation: int) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=hp.epochs,
        learning_rate=hp.learning_rate,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=max(micro_batch, 64),
        warmup_steps=hp.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        weight_decay=hp.weight_decay,
        seed=hp.seed,
        logging_steps=1,
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="no",  # checkpoints are the callback's decision (steps, minutes, shutdown)
        save_total_limit=1,
        report_to=[],
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=bf16,
        # packed sft batches have no padding whatever the lengths; a random order is then the better optimiser
        train_sampling_strategy="random" if packed else "group_by_length",
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
    )


def length_grouped_shuffled_indices(lengths: Sequence[int], batch_size: int, generator: Any = None) -> list[int]:
    """transformers' length grouping (a random permutation cut into mega-batches of up to 50 batches, each
    sorted by length) decides which rows share a batch; then the batches are shuffled, the first (holding the
    longest row, so that an out-of-memory error comes at once) kept first. transformers leaves each mega-batch's
    batches in order, longest to shortest: SST-2 dev accuracy over seeds 0-2 (minilm-l6, LoRA, 4,000 rows, one
    epoch) went from 0.802 / 0.789 / 0.822 to 0.828 / 0.825 / 0.815 with the batches shuffled, at the same
    padding (8%)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    indices = get_length_grouped_indices(lengths, batch_size, generator=generator)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    order = [0, *(1 + torch.randperm(len(batches) - 1, generator=generator)).tolist()] if len(batches) > 1 else [0]
    return [i for b in order for i in batches[b]]


def _length_grouped_shuffled(trainer_class: Any) -> Any:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class ShuffledGroups(LengthGroupedSampler):
        def __iter__(self) -> Iterator[int]:
            return iter(length_grouped_shuffled_indices(self.lengths, self.batch_size, generator=self.generator))

    class ShuffledGroupsTrainer(trainer_class):  # type: ignore[misc, valid-type]
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                sampler.__class__ = ShuffledGroups
            return sampler

    return ShuffledGroupsTrainer


def model_build(entry: BaseModelEntry, method: Any, method_config: dict[str, Any], *, task: str, tokenizer: Any,
                labels: list[str], train_rows: list[dict[str, Any]], hp: Hyperparameters) -> Any:
    """The base with its head, calibrated if the method needs it (EVA, CorDA, LoRA-GA), then wrapped; the new
    weights (the head, the adapter's) are drawn from hp.seed, so that a seed gives one initialisation."""
    from transformers import set_seed

    set_seed(hp.seed)  # (the Trainer seeds too, but only once the model is built)
    base = model_load(entry, task=task, vocab_size=len(tokenizer), labels=labels or None)
    if method.prepare:
        collator, size = collator_build(task, tokenizer, packed=False), hp.batch_size
        batches = [dict(collator(train_rows[i : i + size])) for i in range(0, min(len(train_rows), 8 * size), size)]
        method.prepare(base, method_config, batches=batches, task=task)
    extra: dict[str, Any] = {}
    if method.needs_total_step:  # the optimizer steps the Trainer will take
        extra["total_step"] = math.ceil(hp.epochs * math.ceil(len(train_rows) / hp.batch_size))
    return method.build(base, method_config, task=task, **extra)


def packing_possible(model: Any, task: str) -> bool:
    """Packing needs a decoder whose mask follows position_ids (transformers' masking_utils does, when
    there is no cache and no attention mask); prompt-learning methods prepend virtual tokens or a
    cache, and would let the rows attend across each other."""
    if task != "sft":
        return False
    peft_config = getattr(model, "active_peft_config", None)
    return not getattr(peft_config, "is_prompt_learning", False)


def autocast_safe(model: Any) -> bool:
    """peft's modules cast their inputs to their own weights' dtype, so they run under bf16 autocast; the
    methods written here (workers/methods/native.py) mix dtypes in in-place ops (index_add_), so stay fp32."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def accuracy(prediction: Any) -> dict[str, float]:
    import numpy as np

    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, -1) == prediction.label_ids).mean())}


def metrics_for(task: str, model: Any) -> Callable[[Any], dict[str, float]] | None:
    from workers.training.tokens import metrics_for as token_metrics

    if task == "token-classification":
        return token_metrics({int(k): v for k, v in model.config.id2label.items()})
    return accuracy if task == "classification" else None


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class OomRetry:
    micro_batch: int
    accumulation: int
    error: str


def split_threads(device: str, splittable: bool) -> int:
    """Threads for each of the two processes when this fit should split its batches with a fork
    (workers/training/split.py), else 0: on a CPU with two or more free cores, outside DDP, TRAIN_FORK=auto."""
    import torch

    if (not splittable or device != "cpu" or settings.TRAIN_FORK != "auto" or not hasattr(os, "fork")
            or (torch.distributed.is_available() and torch.distributed.is_initialized())):
        return 0
    return torch.get_num_threads() // 2


def trainer_fit(model: Any, *, task: str, tokenizer: Any, hp: Hyperparameters, train_rows: list[dict[str, Any]],
                eval_rows: list[dict[str, Any]], out: Path, device: str, callbacks: Sequence[Any] = (),
                resume: str | None = None, on_oom: Callable[[OomRetry], None] | None = None,
                training_step: Callable[..., Any] | None = None, bf16_measured: bool | None = None,
                splittable: bool = False, on_schedule_fit: Callable[[int, int, float], None] | None = None) -> Any:
    """Train `model` on the rows and return the Trainer (its state holds the logs). `bf16_measured`: what
    bf16_worthwhile found, decided once for all processes of a DDP job (None: measure here). `splittable`: the
    method is data-parallel (Method.data_parallel), so every batch may be split between this process and a fork
    (split_threads decides).

    `training_step` replaces the Trainer's (forward, backward) step for methods that update the
    weights themselves (MeZO: two forward passes, no backward).

    On an out-of-memory error the micro-batch halves and gradient accumulation doubles (the effective
    batch stays hp.batch_size) down to OOM_MICRO_BATCH_FLOOR; the trainable weights go back to where
    this attempt started, and training starts again from `resume` (the last checkpoint, or step 0).
    `on_oom` hears of every retry; `on_schedule_fit(step, end, seconds_per_step)` of every time the learning
    rate's decay is fitted to hp.max_train_seconds (hp.schedule_fits_budget).
    """
    import torch
    from transformers import PrinterCallback, Trainer

    threads = threads_for_load(device)
    halves = split_threads(device, splittable)
    packed = packing_possible(model, task)
    packed_rows = settings.TRAIN_PACKING == "auto" and classification_packable(model, task)
    bf16 = (bf16_worthwhile(device) if bf16_measured is None else bf16_measured) and autocast_safe(model)
    if packed:
        model.config.use_cache = False  # a cache turns off the packed-sequence mask
    start_state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    micro_batch, accumulation = hp.batch_size, 1
    trainer_class = _lean_steps(_length_grouped_shuffled(
        _own_step_trainer(training_step) if training_step else Trainer))
    if packed_rows:
        trainer_class = _train_collator(trainer_class, PackedClassification(tokenizer.pad_token_id or 0))
    if halves:
        trainer_class = split_trainer_class(trainer_class, seed=hp.seed + 7919, threads=halves, threads_alone=threads,
                                            shifted=task == "sft")
    log.info("training on %s: %s, %s, %s batches", device, "bf16 frozen weights" if bf16 else "fp32",
             f"2 processes of {halves} thread(s)" if halves else f"{threads} thread(s)",
             "packed" if packed or packed_rows else "length-grouped")
    if hp.max_train_seconds:
        callbacks = [*callbacks, _time_budget(hp.max_train_seconds, fit_schedule=hp.schedule_fits_budget,
                                              on_fit=on_schedule_fit)]
    if device == "cpu" and not settings.TRAIN_THREADS and threads_nominal() > 1 and not halves:
        callbacks = [*callbacks, _thread_tuner(threads_nominal())]
    while True:
        trainer = trainer_class(
            model=model,
            args=training_args(hp, out, packed=packed or packed_rows, bf16=bf16, evaluate=bool(eval_rows),
                               device=device, micro_batch=micro_batch, accumulation=accumulation),
            train_dataset=Rows(train_rows),
            eval_dataset=Rows(eval_rows) if eval_rows else None,
            data_collator=collator_build(task, tokenizer, packed=packed),
            compute_metrics=metrics_for(task, model),
            callbacks=list(callbacks),
        )
        trainer.remove_callback(PrinterCallback)  # callbacks record the logs; no per-step prints
        try:
            with fast_path(model, device=device, bf16=bf16, task=task):
                try:
                    trainer.train(resume_from_checkpoint=resume)
                finally:
                    if halves:
                        trainer.fork_close()  # type: ignore[union-attr]
                        torch.set_num_threads(threads)
            return trainer
        except Exception as exc:
            if not _is_oom(exc) or micro_batch % 2 or micro_batch // 2 < OOM_MICRO_BATCH_FLOOR:
                raise
            micro_batch, accumulation = micro_batch // 2, accumulation * 2
            del trainer
            with torch.no_grad():
                params = dict(model.named_parameters())
                for name, value in start_state.items():
                    params[name].copy_(value)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of memory; retrying with micro-batch %s x %s", micro_batch, accumulation)
            if on_oom:
                on_oom(OomRetry(micro_batch, accumulation, f"{type(exc).__name__}: {exc}"[:300]))


def _lean_steps(trainer_class: Any) -> Any:
    """The Trainer without three walks of the whole module tree at every step (py-spy: 2.5% of a split step,
    during which the fork waits): the FLOPs it logs count the model's parameters once, not at every step; the
    gradient clip and zero_grad take a list of the model's parameters made once (frozen ones have no gradient,
    and both skip those, as on the tree). On anything distributed, the Trainer's own clip."""
    from accelerate.utils import DistributedType

    class LeanStepTrainer(trainer_class):  # type: ignore[misc, valid-type]
        _flos_parameters: int | None = None
        _parameters_of: tuple[int, list[Any]] | None = None

        def floating_point_ops(self, inputs: dict[str, Any]) -> int:
            main = getattr(self.model, "main_input_name", "input_ids")
            if main not in inputs or not hasattr(self.model, "num_parameters"):
                return 0
            if self._flos_parameters is None:
                self._flos_parameters = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs[main].numel() * self._flos_parameters

        def _parameters(self, model: Any) -> list[Any]:
            if self._parameters_of is None or self._parameters_of[0] != id(model):
                self._parameters_of = (id(model), list(model.parameters()))
            return self._parameters_of[1]

        def _clip_grad_norm(self, model: Any) -> Any:
            if self.accelerator.distributed_type != DistributedType.NO or self.args.fp16:
                return super()._clip_grad_norm(model)
            return self.accelerator.clip_grad_norm_(self._parameters(model), self.args.max_grad_norm)

    return LeanStepTrainer


def _zero_grad_lean(model: Any) -> Callable[[], None]:
    """model.zero_grad() (the Trainer's, after every optimizer step) over a list of the parameters made once,
    rather than a walk of the module tree: the same grads set to None."""
    params = list(model.parameters())

    def zero_grad(set_to_none: bool = True) -> None:
        for param in params:
            if param.grad is not None:
                if set_to_none:
                    param.grad = None
                else:
                    param.grad.detach_().zero_()

    model.zero_grad = zero_grad

    def undo() -> None:
        model.__dict__.pop("zero_grad", None)

    return undo


def _train_collator(trainer_class: Any, collator: Any) -> Any:
    """The Trainer, with `collator` for its training batches only (evaluation keeps its padded batches)."""

    class TrainCollatorTrainer(trainer_class):  # type: ignore[misc, valid-type]
        def get_train_dataloader(self) -> Any:
            padded: Any = getattr(self, "data_collator")  # noqa: B009 - the Trainer attribute has no static type here
            self.data_collator = collator
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = padded

    return TrainCollatorTrainer


BUDGET_CHECKS = (0.1, 0.3, 0.6)  # fractions of max_train_seconds at which the schedule is fitted to it


def _time_budget(seconds: float, *, fit_schedule: bool = False,
                 on_fit: Callable[[int, int, float], None] | None = None) -> Any:
    """A callback that ends training once `seconds` of training have passed (hp.max_train_seconds). With
    `fit_schedule` (hp.schedule_fits_budget), at each of BUDGET_CHECKS it projects from the step time so far
    where the budget will end, and when that is before the schedule's end, the learning rate from here on
    falls linearly to 0 at that step (callbacks.schedule_end_at), and `on_fit(step, end, seconds per step)`
    hears of it."""
    from transformers import TrainerCallback

    from workers.training.callbacks import schedule_end_at

    class TimeBudget(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = clock()
            self.first_step = state.global_step
            self.end = state.max_steps
            self.checks = list(BUDGET_CHECKS) if fit_schedule else []

        def on_step_end(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None,
                        **kwargs: Any) -> None:
            elapsed = clock() - self.started
            if elapsed >= seconds:
                log.info("stopping at step %s: the time budget of %s s is spent", state.global_step, seconds)
                control.should_training_stop = True
                return
            if not self.checks or elapsed < self.checks[0] * seconds or lr_scheduler is None:
                return
            while self.checks and elapsed >= self.checks[0] * seconds:
                self.checks.pop(0)
            per_step = elapsed / max(1, state.global_step - self.first_step)
            end = state.global_step + int((seconds - elapsed) / per_step)
            if end < self.end and schedule_end_at(lr_scheduler, state.global_step, end):
                log.info("step %s: %.1f s a step, so the budget ends near step %s of %s: the learning rate now "
                         "falls to 0 there", state.global_step, per_step, end, state.max_steps)
                self.end = end
                if on_fit:
                    on_fit(state.global_step, end, per_step)

    return TimeBudget()


def _own_step_trainer(step: Callable[..., Any]) -> Any:
    from transformers import Trainer

    class OwnStepTrainer(Trainer):
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            inputs = self._prepare_inputs(inputs)
            return step(model, inputs, step=self.state.global_step + 1) / self.args.gradient_accumulation_steps

    return OwnStepTrainer


@dataclass
class Fit:
    trainer: Any
    train_seconds: float
    real_tokens: int
    rows: int
    eval_metrics: dict[str, float]


def examples_train(*, base_model: str, task: str, method_name: str, method_config: dict[str, Any],
                   hp: Hyperparameters, train: Sequence[Example], evaluation: Sequence[Example], out: Path,
                   callbacks: Sequence[Any] = ()) -> Fit:
    """What a job does between downloading its datasets and publishing, on examples in memory: encode, build
    the method's model, train (timed: trainer_fit alone), evaluate. For benchmarks and tests; `callbacks` are
    extra TrainerCallbacks (a benchmark's dev curve)."""
    from workers.methods.registry import config_resolve, method_get
    from workers.training.callbacks import MethodStepCallback

    entry, method = base_model_get(base_model), method_get(method_name)
    config = config_resolve(method.config, method_config, param="method_config")
    labels = labels_for(task, train)
    label2id = {name: i for i, name in enumerate(labels)} if labels else None
    tokenizer = tokenizer_load(entry)
    train_rows = rows_encode(tokenizer, task, train, hp.max_seq_length, label2id)
    eval_rows = rows_encode(tokenizer, task, evaluation, hp.max_seq_length, label2id)
    threads_configure()
    model = model_build(entry, method, config, task=task, tokenizer=tokenizer, labels=labels,
                        train_rows=train_rows, hp=hp)
    started = time.perf_counter()  # the method's own step and after-step work, as in a job (MeZO, LT-SFT, LISA)
    trainer = trainer_fit(model, task=task, tokenizer=tokenizer, hp=hp, train_rows=train_rows, eval_rows=[],
                          out=out, device=device_pick(), training_step=method.training_step,
                          callbacks=[*([MethodStepCallback(method.after_step)] if method.after_step else []),
                                     *callbacks],
                          splittable=method.data_parallel)
    seconds = time.perf_counter() - started
    metrics = trainer.evaluate(Rows(eval_rows)) if eval_rows else {}
    return Fit(trainer, seconds, sum(len(r["input_ids"]) for r in train_rows), len(train_rows), metrics)
