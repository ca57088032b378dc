"""Inference serving, side by side in one run: the service's adapter cache and batcher (workers/inference/)
against peft's default paths and the naive way (load the adapter for each request).

usage (from the repo root):
  .venv/bin/python bench/inference.py            # everything; writes bench/results/inference.json
  .venv/bin/python bench/inference.py --quick    # fewer repetitions and adapters (a smoke run)
  .venv/bin/python bench/inference.py --only generation --reps 15   # one section again; the others are kept

A real SeaweedFS (storage/embedded.py, as the tests start it) holds the adapters; every cold load downloads the
files and checks their sha256. No database: the bench hands the cache the same version descriptions
({prefix, files, metadata}) the web API sends to the inference server. Figures are medians of interleaved
repetitions: within a repetition the variants run back to back, in turn.

1. cold load of a minilm-l6 LoRA adapter (q, v, classifier head) of rank 8, 16, 64 into a base already loaded,
   against peft's own load_adapter from a local folder (download not counted) and PeftModel.from_pretrained on a
   freshly loaded base (peft's default path);
2. warm switch: a request for a cached adapter after another one (cache lookup + making it the active one);
3. mixed batches of 64 rows over 1, 4, 16, 64 distinct adapters (one forward pass), against the naive way;
   Beside it, peft's own mixed batch (`adapter_names`, its per-adapter loop inside every LoRA layer) at 1 and 16;
4. generation on tiny-llama, 8 prompts: one adapter vs 8 distinct adapters, prefill and per decode step: the
   service's batched decode (workers/inference/decode.py), peft's generate with per-row adapter_names, and one
   prompt at a time (the service before batching; per step of all 8 prompts);
5. 1,000 registered adapters through a cache bounded by bytes to 250 of them, a working set of 500 (twice the
   cache), uniform and skewed (Zipf s=1.1) request mixes of one-row requests: hit rate, p50, p99, against the p50
   when everything is cached. The 1,000 adapters share one set of weights (each under its own prefix, so each is
   its own cold load).
"""

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

TEXTS = ["a wonderful, moving film with a cast that never puts a foot wrong",
         "tedious and dull, the plot drags from the first scene to the last",
         "an ordinary sentence about nothing in particular, twelve words or so",
         "the soundtrack is great but the story is thin and the acting wooden"]
LABELS = ["neg", "pos"]


def services_start(tmp: Path) -> Any:
    from storage import embedded

    port = embedded.free_port()
    os.environ.update(S3_ENDPOINT_URL=f"http://127.0.0.1:{port}", S3_ACCESS_KEY_ID="bench-key",
                      S3_SECRET_ACCESS_KEY="bench-secret", S3_BUCKET="foundry-bench", HF_HUB_OFFLINE="1",
                      FOUNDRY_VAR_DIR=str(tmp / "var"), DJANGO_SETTINGS_MODULE="api.settings")
    proc = embedded.seaweedfs_start(tmp / "seaweedfs", s3_port=port, access_key="bench-key",
                                    secret_key="bench-secret")
    import django

    django.setup()
    from storage import s3

    deadline = time.monotonic() + 60
    while True:
        try:
            s3.bucket_ensure()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return proc


def base(name: str, task: str = "classification") -> Any:
    from workers.base_models import base_model_get, model_load, tokenizer_load

    entry = base_model_get(name)
    return model_load(entry, task=task, vocab_size=len(tokenizer_load(entry)),
                      labels=LABELS if task == "classification" else None)


def lora_folder(path: Path, *, model_name: str, r: int, seed: int) -> Path:
    import peft
    import torch

    torch.manual_seed(seed)
    sft = model_name == "tiny-llama"
    config = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM if sft else peft.TaskType.SEQ_CLS, r=r,
                             lora_alpha=2 * r, target_modules=["q_proj", "v_proj"] if sft else ["query", "value"],
                             init_lora_weights=False)
    peft.get_peft_model(base(model_name, "sft" if sft else "classification"), config).save_pretrained(path)
    return path


def publish(folder: Path, prefix: str, *, model_name: str, task: str) -> dict[str, Any]:
    """The version description the web API sends: files put in S3 with their sha256."""
    from storage import s3

    files = []
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest = s3.put_file(prefix + name, folder / name)
        files.append({"name": name, "size": (folder / name).stat().st_size, "sha256": digest})
    metadata = {"task": task, "labels": LABELS if task == "classification" else [],
                "base_model": {"id": model_name}}
    return {"prefix": prefix, "files": files, "metadata": metadata}


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


def cache_new(**kwargs: Any) -> Any:
    from workers.inference.cache import AdapterCache

    return AdapterCache(max_adapters=kwargs.get("max_adapters", 10_000), max_bytes=kwargs.get("max_bytes", 2**40))


def bench_cold_load(tmp: Path, reps: int) -> dict[str, Any]:
    import peft
    import torch

    ranks = (8, 16, 64)
    folders = {r: lora_folder(tmp / f"cold-r{r}", model_name="minilm-l6", r=r, seed=r) for r in ranks}
    cache = cache_new()
    cache.get(publish(folders[8], "bench/warmup/", model_name="minilm-l6", task="classification"))
    peft_base = peft.PeftModel.from_pretrained(base("minilm-l6"), folders[8], adapter_name="warm")
    ours: dict[int, list[float]] = {r: [] for r in ranks}
    peft_load: dict[int, list[float]] = {r: [] for r in ranks}
    peft_default: dict[int, list[float]] = {r: [] for r in ranks}
    for rep in range(reps):
        for r in ranks:
            version = publish(folders[r], f"bench/cold/{rep}/r{r}/", model_name="minilm-l6", task="classification")
            started = time.perf_counter()
            cache.get(version)
            ours[r].append(time.perf_counter() - started)
            started = time.perf_counter()
            with torch.no_grad():
                peft_base.load_adapter(folders[r], adapter_name=f"p{rep}r{r}")
            peft_load[r].append(time.perf_counter() - started)
            peft_base.delete_adapter(f"p{rep}r{r}")
            if rep < max(2, reps // 3):  # slow: a whole base model each time
                started = time.perf_counter()
                peft.PeftModel.from_pretrained(base("minilm-l6"), folders[r])
                peft_default[r].append(time.perf_counter() - started)
    result = {
        "service_cold_load_ms": {r: median_ms(v) for r, v in ours.items()},
        "peft_load_adapter_ms": {r: median_ms(v) for r, v in peft_load.items()},
        "peft_from_pretrained_with_base_ms": {r: median_ms(v) for r, v in peft_default.items()},
        "file_bytes": {r: (folders[r] / "adapter_model.safetensors").stat().st_size for r in ranks},
    }
    result["service_rank64_over_rank16"] = round(result["service_cold_load_ms"][64] /
                                                 result["service_cold_load_ms"][16], 3)
    result["peft_load_adapter_rank64_over_rank16"] = round(result["peft_load_adapter_ms"][64] /
                                                           result["peft_load_adapter_ms"][16], 3)
    return result


def bench_warm_switch(tmp: Path, reps: int) -> dict[str, Any]:
    folder = lora_folder(tmp / "warm", model_name="minilm-l6", r=8, seed=1)
    cache = cache_new()
    versions = [publish(folder, f"bench/warm/{i}/", model_name="minilm-l6", task="classification") for i in range(2)]
    for version in versions:
        cache.get(version)
    times = []
    for rep in range(reps * 10):
        version = versions[rep % 2]
        started = time.perf_counter()
        loaded, base_ = cache.get(version)
        if not loaded.native:
            base_.model.set_adapter(loaded.name)
        times.append(time.perf_counter() - started)
    return {"service_warm_switch_ms": median_ms(times)}


def _requests(versions: list[dict[str, Any]], rows: int, distinct: int) -> list[Any]:
    from concurrent.futures import Future

    from workers.inference.engine import Request

    per = rows // distinct
    return [Request(versions[i], [TEXTS[(i + j) % len(TEXTS)] for j in range(per)], Future())
            for i in range(distinct)]


def bench_mixed(tmp: Path, reps: int, naive_reps: int) -> dict[str, Any]:
    import peft
    import torch

    from workers.inference.engine import Engine

    torch.set_num_threads(2)
    folder = lora_folder(tmp / "mixed", model_name="minilm-l6", r=8, seed=2)
    versions = [publish(folder, f"bench/mixed/{i}/", model_name="minilm-l6", task="classification")
                for i in range(64)]
    engine = Engine(cache_new(), window_ms=0)
    for version in versions:
        engine.cache.get(version)
    rows, counts = 64, (1, 4, 16, 64)
    seconds: dict[int, list[float]] = {k: [] for k in counts}
    engine._run(_requests(versions, rows, 1))  # warm-up
    for _ in range(reps):
        for k in counts:
            batch = _requests(versions, rows, k)
            started = time.perf_counter()
            engine._run(batch)
            seconds[k].append(time.perf_counter() - started)
            for request in batch:
                request.future.result(0)
    throughput = {k: round(rows / statistics.median(v), 1) for k, v in seconds.items()}
    # peft's own mixed batch (adapter_names: its per-adapter loop in every LoRA layer) on the same model and rows
    base_ = engine.cache.bases[next(iter(engine.cache.bases))]
    names = {k: [loaded.name for loaded in list(engine.cache.adapters.values())[:k] for _ in range(rows // k)]
             for k in (1, 16)}
    encoded = base_.tokenizer([TEXTS[i % len(TEXTS)] for i in range(rows)], return_tensors="pt", padding=True)
    peft_seconds: dict[int, list[float]] = {k: [] for k in names}
    for _ in range(max(2, reps // 2)):
        for k, row_names in names.items():
            started = time.perf_counter()
            with torch.no_grad():
                base_.model(**encoded, adapter_names=row_names)
            peft_seconds[k].append(time.perf_counter() - started)
    peft_throughput = {k: round(rows / statistics.median(v), 1) for k, v in peft_seconds.items()}
    # the naive way: for each request (one adapter's rows), load the adapter from S3, run, drop it
    naive: dict[int, list[float]] = {k: [] for k in (1, 16)}
    model = peft.PeftModel.from_pretrained(base("minilm-l6"), folder, adapter_name="keep").eval()
    tokenizer = engine.cache.bases[next(iter(engine.cache.bases))].tokenizer
    from storage import s3

    for _ in range(naive_reps):
        for k in naive:
            started = time.perf_counter()
            for i, request in enumerate(_requests(versions, rows, k)):
                local = tmp / f"naive-{i}"
                for entry in request.version["files"]:
                    s3.download_file(request.version["prefix"] + entry["name"], local / entry["name"],
                                     sha256=entry["sha256"])
                with torch.no_grad():
                    model.load_adapter(local, adapter_name="n")
                    model.set_adapter("n")
                    model(**tokenizer(request.inputs, return_tensors="pt", padding=True))
                model.set_adapter("keep")
                model.delete_adapter("n")
                shutil.rmtree(local)
            naive[k].append(time.perf_counter() - started)
    return {"rows_per_batch": rows, "service_rows_per_s": throughput,
            "service_16_over_1": round(throughput[16] / throughput[1], 3),
            "peft_adapter_names_rows_per_s": peft_throughput,
            "peft_16_over_service_1": round(peft_throughput[16] / throughput[1], 3),
            "naive_rows_per_s": {k: round(rows / statistics.median(v), 1) for k, v in naive.items()}}


def bench_generation(tmp: Path, reps: int) -> dict[str, Any]:
    import peft
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from workers.inference.decode import DecodeRow, decode_batch

    torch.set_num_threads(2)
    folders = [lora_folder(tmp / f"gen{i}", model_name="tiny-llama", r=8, seed=10 + i) for i in range(8)]
    model = peft.PeftModel.from_pretrained(base("tiny-llama", "sft"), folders[0], adapter_name="g0")
    for i, folder in enumerate(folders[1:], start=1):
        model.load_adapter(folder, adapter_name=f"g{i}")
    model.eval()
    from workers.base_models import base_model_get, tokenizer_load

    tokenizer = tokenizer_load(base_model_get("tiny-llama"))
    tokenizer.padding_side = "left"
    prompts = [f"Question {i}: what is the best thing about item {i}?" for i in range(8)]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
    steps = 32

    class Clock(StoppingCriteria):  # when each new token is out
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    def timed(times: list[float], started: float) -> tuple[float, list[float]]:
        return times[0] - started, [b - a for a, b in zip(times, times[1:], strict=False)]

    def run(names: list[str]) -> tuple[float, list[float]]:  # peft's generate with per-row adapter_names
        clock = Clock()
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(**encoded, adapter_names=names, max_new_tokens=steps + 1, min_new_tokens=steps + 1,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id,
                           stopping_criteria=StoppingCriteriaList([clock]))
        return timed(clock.times, started)

    prompt_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]

    def ours(names: list[str]) -> tuple[float, list[float]]:  # the service: decode.py through batched_lora.py
        times: list[float] = []
        rows = [DecodeRow(prompt=ids, adapter=name, max_tokens=steps + 1,
                          on_token=(lambda _: times.append(time.perf_counter()) or False) if i == 0 else
                          (lambda _: False)) for i, (ids, name) in enumerate(zip(prompt_ids, names, strict=True))]
        started = time.perf_counter()
        decode_batch(model, rows, eos=None, pad=tokenizer.pad_token_id)
        return timed(times, started)

    def one_at_a_time(names: list[str]) -> tuple[float, list[float]]:  # the service before: prompt by prompt
        first, gaps = 0.0, []
        with torch.no_grad():
            for ids, name in zip(prompt_ids, names, strict=True):
                model.set_adapter(name)
                clock = Clock()
                started = time.perf_counter()
                model.generate(input_ids=torch.tensor([ids]), max_new_tokens=steps + 1, min_new_tokens=steps + 1,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id,
                               stopping_criteria=StoppingCriteriaList([clock]))
                prefill_s, step_gaps = timed(clock.times, started)
                first += prefill_s
                gaps += [gap * len(prompt_ids) for gap in step_gaps]  # a step of all 8 prompts, one after another
        return first, gaps

    variants = {"one_adapter": ["g0"] * 8, "eight_adapters": [f"g{i}" for i in range(8)]}
    ways = {"service": ours, "peft": run, "one_at_a_time": one_at_a_time}
    prefill: dict[tuple[str, str], list[float]] = {(w, k): [] for w in ways for k in variants}
    decode: dict[tuple[str, str], list[float]] = {(w, k): [] for w in ways for k in variants}
    run(variants["one_adapter"])
    ours(variants["one_adapter"])
    for _ in range(reps):
        for way, fn in ways.items():
            for key, names in variants.items():
                first, gaps = fn(names)
                prefill[way, key].append(first)
                decode[way, key] += gaps
    # prefill: median over repetitions; a decode step: median of every step's time (token to token) of all of them
    result: dict[str, Any] = {"prompts": 8, "decode_steps": steps}
    for way in ways:
        result[f"{way}_prefill_ms"] = {k: median_ms(prefill[way, k]) for k in variants}
        result[f"{way}_decode_step_ms"] = {k: median_ms(decode[way, k]) for k in variants}
        result[f"{way}_decode_kept"] = round(result[f"{way}_decode_step_ms"]["one_adapter"] /
                                             result[f"{way}_decode_step_ms"]["eight_adapters"], 3)
        result[f"{way}_prefill_kept"] = round(result[f"{way}_prefill_ms"]["one_adapter"] /
                                              result[f"{way}_prefill_ms"]["eight_adapters"], 3)
    result["service_over_one_at_a_time_decode_8_adapters"] = round(
        result["one_at_a_time_decode_step_ms"]["eight_adapters"] / result["service_decode_step_ms"]["eight_adapters"],
        2)
    return result


def bench_many(tmp: Path, registered: int, requests: int) -> dict[str, Any]:
    import torch

    from workers.inference.engine import Engine

    torch.set_num_threads(2)
    folder = lora_folder(tmp / "many", model_name="minilm-l6", r=8, seed=3)
    started = time.perf_counter()
    versions = [publish(folder, f"bench/many/{i}/", model_name="minilm-l6", task="classification")
                for i in range(registered)]
    upload_s = time.perf_counter() - started
    size = versions[0]["files"][1]["size"]
    cached, working = registered // 4, registered // 2
    rng = random.Random(0)
    zipf = [1 / (i + 1) ** 1.1 for i in range(working)]
    mixes = {"uniform": [rng.randrange(working) for _ in range(requests)],
             "skewed": rng.choices(range(working), weights=zipf, k=requests)}
    out: dict[str, Any] = {"registered": registered, "cache_adapters_by_bytes": cached, "working_set": working,
                           "requests": requests, "adapter_bytes": size, "upload_seconds": round(upload_s, 1)}

    def serve(engine: Engine, order: list[int]) -> list[float]:
        times = []
        for i in order:
            started = time.perf_counter()
            engine.predict(versions[i], [TEXTS[i % len(TEXTS)]])
            times.append(time.perf_counter() - started)
        return times

    all_cached = Engine(cache_new(max_bytes=size * (cached + 1)), window_ms=0)
    serve(all_cached, list(range(cached)))
    warm = serve(all_cached, [rng.randrange(cached) for _ in range(requests)])
    out["all_cached"] = {"p50_ms": median_ms(warm), "p99_ms": round(sorted(warm)[int(0.99 * len(warm))] * 1000, 3)}
    for name, order in mixes.items():
        engine = Engine(cache_new(max_bytes=size * cached), window_ms=0)
        serve(engine, order[: requests // 4])  # fill the cache first
        before = engine.cache.stats.hits, engine.cache.stats.cold_loads
        times = serve(engine, order)
        hits = engine.cache.stats.hits - before[0]
        loads = engine.cache.stats.cold_loads - before[1]
        out[name] = {"hit_rate": round(hits / (hits + loads), 3), "p50_ms": median_ms(times),
                     "p99_ms": round(sorted(times)[int(0.99 * len(times))] * 1000, 3)}
        out[name]["p50_over_all_cached"] = round(out[name]["p50_ms"] / out["all_cached"]["p50_ms"], 2)
    return out


SECTIONS = {"cold": "cold_load", "warm": "warm_switch", "mixed": "mixed_batches", "generation": "generation",
            "many": "many_adapters"}


def _section(name: str, tmp: Path, reps: int, quick: bool) -> dict[str, Any]:
    if name == "cold":
        return bench_cold_load(tmp, reps)
    if name == "warm":
        return bench_warm_switch(tmp, reps)
    if name == "mixed":
        return bench_mixed(tmp, reps, naive_reps=1 if quick else 3)
    if name == "generation":
        return bench_generation(tmp, reps)
    return bench_many(tmp, 200 if quick else 1000, 400 if quick else 2000)


def main() -> None:
    import subprocess

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 7, --quick 3)")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 7)
    tmp = Path(tempfile.mkdtemp(prefix="foundry-bench-inference-"))
    proc = services_start(tmp)
    path = RESULTS / ("inference-quick.json" if args.quick else "inference.json")
    # sections run alone (--only) replace their own entry; the others keep their last run's figures
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results.update({"machine": {"cpus": os.cpu_count()}, "quick": args.quick})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    try:
        import torch

        torch.set_num_threads(2)
        for name in [n for n in SECTIONS if n in set(args.only.split(","))]:
            load_before = os.getloadavg()[0]
            result = _section(name, tmp, reps, args.quick)
            result["run"] = {"commit": commit, "repetitions": reps, "load_average_before": round(load_before, 1),
                             "load_average_after": round(os.getloadavg()[0], 1)}
            results[SECTIONS[name]] = result
            print(json.dumps(result), flush=True)
    finally:  # the sections that finished are written even when a later one fails
        from storage import embedded

        embedded.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, sort_keys=True))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
