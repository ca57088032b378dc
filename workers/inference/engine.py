"""Requests for many adapters, batched: rows that arrive within a short window are grouped by
base model and run together, rows of different LoRA adapters in one forward pass (batched_lora.py: every
row's own A and B gathered, two bmm per layer, in place of peft's per-adapter loop); other adapter types run
one group per adapter, and each version of a method written here (SSF, bottleneck adapters, DyLoRA,
LT-SFT, LISA, MeZO, MixLoRA) runs on its own copy of the base model, its rows in a batch of their own.

Generation (sft adapters) goes through the same thread: the prompts of every plain-LoRA request in the window
that share a base are decoded together (decode.py: one forward pass per step for all of them, each row through
its own adapter); other types and methods written here run one prompt at a time. Greedy at temperature 0, else
sampling (temperature, top_p), up to max_tokens, cut at the first stop string or the end-of-sequence token the
training format appends. Text comes out as events ({"index", "delta"} then {"index", "finish_reason",
"prompt_tokens", "completion_tokens"}, as soon as that prompt is done), so a stream and a whole answer are the
same code."""

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from workers.inference.cache import MIXED_BATCH_TYPES, AdapterCache, Base, Loaded


@dataclass
class Request:
    version: dict[str, Any]
    inputs: list[Any]  # texts; token-classification: lists of tokens
    future: Future


MAX_NEW_TOKENS = 2048
MAX_PROMPTS = 16


@dataclass(frozen=True)
class GenerateParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> "GenerateParams":
        """Checked values from a request body; ValueError names the bad one."""
        unknown = set(raw) - {"max_tokens", "temperature", "top_p", "stop", "seed"}
        if unknown:
            raise ValueError(f"unknown generation parameters {sorted(unknown)}")
        max_tokens = raw.get("max_tokens") or cls.max_tokens
        temperature = cls.temperature if raw.get("temperature") is None else raw["temperature"]
        top_p = cls.top_p if raw.get("top_p") is None else raw["top_p"]
        stop = raw.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        seed = raw.get("seed")
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_tokens must be an integer from 1 to {MAX_NEW_TOKENS}")
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise ValueError("temperature must be a number from 0 to 2")
        if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise ValueError("top_p must be a number above 0, at most 1")
        if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise ValueError("stop must be a non-empty string or a list of at most 4 of them")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError("seed must be an integer")
        return cls(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), stop=stop, seed=seed)


@dataclass
class GenerateRequest:
    version: dict[str, Any]
    prompts: list[str]
    params: GenerateParams
    events: queue.Queue = field(default_factory=queue.Queue)  # dicts, then None


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class _Emitter:
    """A stopping criterion that, after every new token, sends the text that can no longer change
    (held back: a possible start of a stop string, an incomplete character) and stops at a stop string."""

    def __init__(self, tokenizer: Any, prompt_length: int, stops: tuple[str, ...], emit: Callable[[str], None]):
        self.tokenizer, self.prompt_length, self.stops, self.emit = tokenizer, prompt_length, stops, emit
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.sent = 0
        self.stopped = False

    def text(self, ids: Any) -> str:
        text = self.tokenizer.decode(ids[self.prompt_length:], skip_special_tokens=True)
        cut = _stop_at(text, self.stops)
        if cut is not None:
            self.stopped = True
            return text[:cut]
        return text

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.tensor([self.update(input_ids[0])], device=input_ids.device)

    def update(self, ids: Any) -> bool:
        """Send the text after `ids` that can no longer change; True once a stop string is reached."""
        text = self.text(ids)
        ready = len(text) if self.stopped else len(text) - self.holdback
        while ready > self.sent and text[ready - 1] == "\ufffd":
            ready -= 1
        if ready > self.sent:
            self.emit(text[self.sent:ready])
            self.sent = ready
        return self.stopped

    def finish(self, ids: Any) -> None:
        text = self.text(ids)
        if len(text) > self.sent:
            self.emit(text[self.sent:])


class Engine:
    def __init__(self, cache: AdapterCache, *, window_ms: float = 5.0, max_rows: int = 64):
        self.cache, self.window, self.max_rows = cache, window_ms / 1000, max_rows
        self.queue: queue.Queue[Request | GenerateRequest] = queue.Queue()
        self.batch_sizes: list[int] = []
        self._thread = threading.Thread(target=self._loop, name="inference-batcher", daemon=True)
        self._thread.start()

    def predict(self, version: dict[str, Any], inputs: list[Any], timeout: float = 120) -> list[Any]:
        future: Future = Future()
        self.queue.put(Request(version, inputs, future))
        return future.result(timeout)

    def generate_stream(self, version: dict[str, Any], prompts: list[str], params: dict[str, Any]) -> Iterator[
            dict[str, Any]]:
        """Check the request now (ValueError), then yield its events as the batcher thread makes them."""
        if not prompts or len(prompts) > MAX_PROMPTS or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError(f"prompts must be 1 to {MAX_PROMPTS} non-empty strings")
        request = GenerateRequest(version, list(prompts), GenerateParams.parse(params))
        self.queue.put(request)
        return iter(request.events.get, None)

    def generate(self, version: dict[str, Any], prompts: list[str], params: dict[str, Any]) -> list[dict[str, Any]]:
        """The whole answer for each prompt: {"text", "finish_reason", "prompt_tokens", "completion_tokens"}."""
        outputs = [{"text": ""} for _ in prompts]
        for event in self.generate_stream(version, prompts, params):
            if "error" in event:
                raise RuntimeError(event["error"])
            output = outputs[event["index"]]
            if "delta" in event:
                output["text"] += event["delta"]
            else:
                output.update({k: v for k, v in event.items() if k != "index"})
        return outputs

    def _loop(self) -> None:
        while True:
            batch: list[Any] = [self.queue.get()]
            deadline = time.monotonic() + self.window
            rows = _rows(batch[0])
            while rows < self.max_rows and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self.queue.get(timeout=left))
                    rows += _rows(batch[-1])
                except queue.Empty:
                    break
            predicts = [r for r in batch if isinstance(r, Request)]
            if predicts:
                self._run(predicts)
            generates = [r for r in batch if isinstance(r, GenerateRequest)]
            if generates:
                self._generate_all(generates)

    def _generate_all(self, requests: list[GenerateRequest]) -> None:
        groups: dict[int, list[tuple[GenerateRequest, Loaded, Base]]] = defaultdict(list)
        for request in sorted(requests, key=lambda r: r.version["prefix"]):
            try:
                loaded, base = self.cache.get(request.version)
                if base.task != "sft":
                    raise ValueError(f"a {base.task!r} adapter does not generate text")
                if loaded.native or loaded.peft_type not in MIXED_BATCH_TYPES:
                    for index, prompt in enumerate(request.prompts):
                        self._generate_one(base, loaded, index, prompt, request)
                else:
                    groups[id(base)].append((request, loaded, base))
                    continue
            except Exception as exc:  # a broken version or bad input fails its own request, not the batcher
                request.events.put({"error": f"{type(exc).__name__}: {exc}"})
            request.events.put(None)
        for members in groups.values():
            self._generate_batch(members)

    def _generate_batch(self, members: list[tuple[GenerateRequest, Loaded, Base]]) -> None:
        """Every prompt of these plain-LoRA requests (one base) decoded together; each request's events end with
        None once its last prompt is done (or an error for those still running if the batch breaks)."""
        import torch

        from workers.inference.decode import DecodeRow, decode_batch

        base = members[0][2]
        tokenizer = base.tokenizer
        eos = _eos(tokenizer)
        left = {id(request): len(request.prompts) for request, _, _ in members}
        rows = []

        def done(row: DecodeRow, request: GenerateRequest, index: int, emitter: _Emitter) -> None:
            emitter.finish(row.new)
            request.events.put({"index": index, "finish_reason": "stop" if row.stopped else "length",
                                "prompt_tokens": len(row.prompt), "completion_tokens": len(row.new)})
            left[id(request)] -= 1
            if not left[id(request)]:
                request.events.put(None)

        for request, loaded, _ in members:
            params = request.params
            for index, prompt in enumerate(request.prompts):
                emitter = _Emitter(tokenizer, 0, params.stop,
                                   lambda delta, r=request, i=index: r.events.put({"index": i, "delta": delta}))
                generator = None if params.seed is None else torch.Generator().manual_seed(params.seed + index)
                rows.append(DecodeRow(
                    prompt=_prompt_ids(tokenizer, prompt), adapter=loaded.name, max_tokens=params.max_tokens,
                    on_token=emitter.update, temperature=params.temperature, top_p=params.top_p, generator=generator,
                    on_done=lambda row, r=request, i=index, e=emitter: done(row, r, i, e)))
        self.batch_sizes = [*self.batch_sizes[-999:], len(rows)]
        try:
            decode_batch(base.model, rows, eos=eos, pad=_pad(tokenizer, eos))
        except Exception as exc:  # the batch broke: its unfinished requests fail, not the batcher
            for request, _, _ in members:
                if left[id(request)]:
                    request.events.put({"error": f"{type(exc).__name__}: {exc}"})
                    request.events.put(None)

    def _generate_one(self, base: Base, loaded: Loaded, index: int, prompt: str, request: GenerateRequest) -> None:
        import torch
        from transformers import StoppingCriteriaList

        tokenizer, params = base.tokenizer, request.params
        ids = _prompt_ids(tokenizer, prompt)
        eos = _eos(tokenizer)
        emitter = _Emitter(tokenizer, len(ids), params.stop,
                           lambda delta: request.events.put({"index": index, "delta": delta}))
        sampling: dict[str, Any] = {"do_sample": False}
        if params.temperature > 0:
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        model = _generator(base, loaded)
        with torch.no_grad(), torch.random.fork_rng():
            if params.seed is not None:
                torch.manual_seed(params.seed + index)  # n choices from one seed: reproducible, not identical
            output = model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=params.max_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([emitter]), **sampling)[0]
        emitter.finish(output)
        new = output[len(ids):].tolist()
        finished = emitter.stopped or (eos is not None and bool(new) and new[-1] == eos)
        request.events.put({"index": index, "finish_reason": "stop" if finished else "length",
                            "prompt_tokens": len(ids), "completion_tokens": len(new)})

    def _run(self, batch: list[Request]) -> None:
        groups: dict[int, list[tuple[Request, Loaded]]] = defaultdict(list)
        bases: dict[int, Base] = {}
        for request in batch:
            try:
                loaded, base = self.cache.get(request.version)
            except Exception as exc:  # a broken version fails its own request, not the batch
                request.future.set_exception(exc)
                continue
            groups[id(base)].append((request, loaded))
            bases[id(base)] = base
        for key, members in groups.items():
            try:
                outputs = self._forward(bases[key], members)
            except Exception as exc:
                for request, _ in members:
                    request.future.set_exception(exc)
                continue
            for (request, _), result in zip(members, outputs, strict=True):
                request.future.set_result(result)

    def _forward(self, base: Base, members: list[tuple[Request, Loaded]]) -> list[list[Any]]:
        import torch

        from workers.inference.batched_lora import LoraRows, batched_lora

        words = base.task == "token-classification"  # inputs are lists of tokens (a text: split on whitespace)
        if words:
            for request, _ in members:
                request.inputs = [item.split() if isinstance(item, str) else item for item in request.inputs]
        inputs = [item for request, _ in members for item in request.inputs]
        names = [loaded.name for request, loaded in members for _ in request.inputs]
        self.batch_sizes = [*self.batch_sizes[-999:], len(inputs)]
        encoded = base.tokenizer(inputs, return_tensors="pt", padding=True, truncation=True, max_length=512,
                                 is_split_into_words=words)
        with torch.no_grad():
            if members[0][1].native:  # a method written here owns this base: its rows run alone, as one batch
                logits = base.model(**encoded).logits
            elif all(loaded.peft_type in MIXED_BATCH_TYPES for _, loaded in members):
                with batched_lora(base.model, LoraRows(names)):  # heads still follow peft's adapter_names
                    logits = base.model(**encoded, adapter_names=names).logits
            else:
                logits = None
                for name in dict.fromkeys(names):
                    rows = [i for i, n in enumerate(names) if n == name]
                    base.model.set_adapter(name)
                    part = base.model(**{k: v[rows] for k, v in encoded.items()}).logits
                    logits = part.new_empty(len(inputs), *part.shape[1:]) if logits is None else logits
                    logits[rows] = part
        probabilities = logits.softmax(-1)
        results, row = [], 0
        for request, loaded in members:
            answers = []
            for item in request.inputs:
                if words:
                    answers.append(_tag(item, encoded.word_ids(row), probabilities[row], loaded.labels))
                else:
                    answers.append(_classify(probabilities[row], loaded.labels))
                row += 1
            results.append(answers)
        return results

    def metrics(self) -> dict[str, Any]:
        stats = self.cache.stats
        loads = sorted(stats.cold_load_seconds)
        sizes = sorted(self.batch_sizes)
        return {
            "cache_hits": stats.hits, "cold_loads": stats.cold_loads, "evictions": stats.evictions,
            "adapters_loaded": len(self.cache.adapters), "bases_loaded": len(self.cache.bases),
            "cold_load_p50_ms": round(loads[len(loads) // 2] * 1000, 2) if loads else None,
            "batch_size_p50": sizes[len(sizes) // 2] if sizes else None, "batches": len(self.batch_sizes),
        }


def _classify(probabilities: Any, labels: list[str]) -> dict[str, Any]:
    scores = {label: round(float(p), 6) for label, p in zip(labels, probabilities, strict=True)}
    return {"label": max(scores.items(), key=lambda item: item[1])[0], "scores": scores}


def _tag(tokens: list[str], word_ids: list[int | None], probabilities: Any, labels: list[str]) -> list[dict[str, Any]]:
    """Per word: the label of its first sub-token, with that label's probability. Words past the model's 512
    sub-tokens are cut off: label and score null."""
    first: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = position
    tagged = []
    for word, token in enumerate(tokens):
        if word not in first:
            tagged.append({"token": token, "label": None, "score": None})
            continue
        p = probabilities[first[word]]
        best = int(p.argmax())
        tagged.append({"token": token, "label": labels[best], "score": round(float(p[best]), 6)})
    return tagged


def _generator(base: Base, loaded: Loaded) -> Any:
    """The module whose generate() runs this adapter: the PeftModel with it active, or, for a method written
    here, the base model inside its wrapper (after the wrapper's per-forward setup, e.g. DyLoRA's rank)."""
    if not loaded.native:
        base.model.set_adapter(loaded.name)
        return base.model
    from workers.methods.native import NativeModel

    if isinstance(base.model, NativeModel):
        base.model.before_forward()
        return base.model.base
    return base.model


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """As workers.training.data.sft_encode: a BOS when the tokenizer has one, then the text as it is."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer.encode(prompt, add_special_tokens=False)


def _eos(tokenizer: Any) -> int | None:
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def _pad(tokenizer: Any, eos: int | None) -> int:
    for candidate in (tokenizer.pad_token_id, eos, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _rows(request: Request | GenerateRequest) -> int:
    return len(request.inputs) if isinstance(request, Request) else len(request.prompts)
