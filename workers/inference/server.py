"""The inference server: its own process (`python -m workers.inference.server`), bound to
loopback by default. The web API resolves `name@ref` (aliases included, per request) to an
immutable version and sends {"version": {prefix, files, metadata}, "inputs": [...]} here, so
moving an alias switches traffic with no restart and a new version is served on first use.

POST /predict   -> {"outputs": [{"label", "scores"}, ...]}; token-classification versions take lists of tokens
                   (or texts, split on whitespace) -> {"outputs": [[{"token", "label", "score"}, ...], ...]}
POST /generate  {"version", "prompts": [...], "params": {max_tokens, temperature, top_p, stop, seed}, "stream"?}
                -> {"outputs": [{"text", "finish_reason", "prompt_tokens", "completion_tokens"}, ...]}, or with
                   "stream": true, NDJSON events as they come: {"index", "delta"}, then {"index", "finish_reason",
                   "prompt_tokens", "completion_tokens"} per prompt ({"error"} if it breaks half-way)
GET  /health    -> {"ok": true}
GET  /metrics   -> Prometheus text: cache hits, cold loads and their latency, batch sizes, process figures
GET  /metrics.json -> the same engine figures as JSON"""

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "api.settings")
django.setup()

from django.conf import settings  # noqa: E402
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest  # noqa: E402
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4  # noqa: E402

from workers.inference.cache import AdapterCache  # noqa: E402
from workers.inference.engine import Engine  # noqa: E402

MAX_BODY = 4 * 1024 * 1024
engine = Engine(AdapterCache(max_adapters=settings.INFERENCE_CACHE_ADAPTERS, max_bytes=settings.INFERENCE_CACHE_BYTES),
                window_ms=settings.INFERENCE_BATCH_WINDOW_MS)


class EngineCollector:
    """engine.metrics() in Prometheus form; the p50s are over the last 1,000 loads and batches."""

    def collect(self) -> Iterator[Metric]:
        m = engine.metrics()
        for key, what in (("cache_hits", "requests served by a loaded adapter"),
                          ("cold_loads", "adapter versions loaded from S3"), ("evictions", "adapters evicted")):
            yield CounterMetricFamily(f"foundry_inference_{key}", what.capitalize(), value=m[key])
        yield GaugeMetricFamily("foundry_inference_adapters_loaded", "Adapters in memory", value=m["adapters_loaded"])
        yield GaugeMetricFamily("foundry_inference_bases_loaded", "Base models in memory", value=m["bases_loaded"])
        yield GaugeMetricFamily("foundry_inference_cold_load_p50_seconds", "Median cold-load time",
                                value=(m["cold_load_p50_ms"] or 0) / 1000)
        yield GaugeMetricFamily("foundry_inference_batch_size_p50", "Median rows per batch",
                                value=m["batch_size_p50"] or 0)


registry = CollectorRegistry(auto_describe=False)
registry.register(EngineCollector())  # type: ignore[arg-type]
ProcessCollector(registry=registry)


async def _body(receive: Any) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY:
            raise ValueError(f"request body over {MAX_BODY} bytes")
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Any, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_stream(send: Any, events: Iterator[dict[str, Any]]) -> None:
    loop = asyncio.get_running_loop()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]})
    while (event := await loop.run_in_executor(None, next, events, None)) is not None:
        await send({"type": "http.response.body", "body": json.dumps(event).encode() + b"\n", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _generate(receive: Any, send: Any) -> None:
    loop = asyncio.get_running_loop()
    try:
        request = json.loads(await _body(receive))
        version, prompts, params = request["version"], request["prompts"], request.get("params") or {}
        if request.get("stream"):
            events = engine.generate_stream(version, prompts, params)
        else:
            outputs = await loop.run_in_executor(None, engine.generate, version, prompts, params)
    except (ValueError, KeyError, TypeError) as exc:
        return await _send_json(send, 400, {"error": f"{type(exc).__name__}: {exc}"})
    except Exception as exc:  # a version that cannot be loaded or run
        return await _send_json(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
    if request.get("stream"):
        return await _send_stream(send, events)
    await _send_json(send, 200, {"outputs": outputs})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if method == "GET" and path == "/health":
        return await _send_json(send, 200, {"ok": True})
    if method == "GET" and path == "/metrics":
        body = generate_latest(registry)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode()), (b"content-length", str(len(body)).encode())]})
        return await send({"type": "http.response.body", "body": body})
    if method == "GET" and path == "/metrics.json":
        return await _send_json(send, 200, engine.metrics())
    if method == "POST" and path == "/generate":
        return await _generate(receive, send)
    if method != "POST" or path != "/predict":
        return await _send_json(send, 404, {"error": f"no route {method} {path}"})
    try:
        request = json.loads(await _body(receive))
        version, inputs = request["version"], request["inputs"]
        outputs = await asyncio.get_running_loop().run_in_executor(None, engine.predict, version, inputs)
    except (ValueError, KeyError, TypeError) as exc:
        return await _send_json(send, 400, {"error": f"{type(exc).__name__}: {exc}"})
    except Exception as exc:  # a version that cannot be loaded or run
        return await _send_json(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
    await _send_json(send, 200, {"outputs": outputs})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=settings.INFERENCE_HOST, port=settings.INFERENCE_PORT, log_level="warning")
