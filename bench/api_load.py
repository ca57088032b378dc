"""API load: N concurrent clients listing, polling and submitting jobs against the real web process.

usage (from the repo root; PostgreSQL and Redis running on the machine):
  .venv/bin/python bench/api_load.py                          # 50 clients, 1 s pauses, 3 runs of 20 s, medians
  .venv/bin/python bench/api_load.py --clients 100 --seconds 30 --runs 1 --think-ms 0

What it does, all on loopback and bounded in time (setup, then runs x (warm-up + seconds)):
- a fresh PostgreSQL database (`--database`, default foundry_bench, dropped and created again), migrated;
  Redis from REDIS_URL (default the machine's, 127.0.0.1:6379/0) under a key prefix of its own, removed at the
  end; an embedded SeaweedFS for S3 (the health check and dataset uploads use it);
- one user per client with an API token, a validated dataset and 3 jobs with 20 events each, made through
  the services (no training: no worker consumes the queue, so submitted jobs stay queued in Redis);
- the web server exactly as `manage.py launch` starts it (`python -m api.web`: uvicorn, WEB_WORKERS processes,
  `--web-workers` to change);
- each client, in a loop until the time is up: GET /jobs/{id} (poll), GET /jobs/{id}/events?after=N
  (poll events), GET /jobs (list) and POST /jobs (submit), in the mix of MIX, waiting think-ms (default 1000,
  uniform 0..2x) between requests: the rate of `foundry jobs watch` (1 s), twice the UI's (2 s);
  `--think-ms 0` is a closed loop (saturation).

Prints p50/p99 latency and throughput per request type and writes bench/results/api_load.json
(`--out` to change). The load generator runs on the same 2 cores as the server: its CPU counts against it.
"""

import argparse
import asyncio
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MIX = {"poll": 0.45, "events": 0.25, "list": 0.2, "submit": 0.1}
JOB = {"base_model": "tiny-bert", "task": "classification", "method": "lora", "method_config": {"r": 4},
       "hyperparameters": {"epochs": 1, "batch_size": 8}}
ROWS = [{"text": f"{w} movie number {i}", "label": lab} for i in range(20) for w, lab in (("great", "pos"),
                                                                                          ("awful", "neg"))]


def environment(args: argparse.Namespace, tmp: Path, s3_port: int) -> dict[str, str]:
    return {
        "FOUNDRY_VAR_DIR": str(tmp / "var"),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.database}",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "BROKER_KEY_PREFIX": f"foundry-bench-{uuid.uuid4().hex[:8]}:",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "S3_ACCESS_KEY_ID": "bench",
        "S3_SECRET_ACCESS_KEY": "bench-secret", "S3_BUCKET": "foundry-bench",
        "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING",
        # Submissions pile up (nothing trains them): the active-jobs quota would refuse them after 20.
        "MAX_ACTIVE_JOBS_PER_USER": "100000",
    }


def database_recreate(name: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def fixtures_create(clients: int) -> list[dict[str, Any]]:
    """Users, tokens, a validated dataset and 3 jobs with 20 events each per client, through the services."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from api.accounts.services import token_create
    from api.datasets.services import dataset_create, dataset_validate
    from api.jobs.services import job_create, job_event_add
    from storage import s3

    s3.bucket_ensure()
    content = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    fixtures = []
    for i in range(clients):
        user = get_user_model().objects.create_user(username=f"load{i}")
        dataset = dataset_create(user=user, upload=io.BytesIO(content), filename="train.jsonl",
                                 task="classification", base_model="tiny-bert")
        dataset_validate(dataset_id=dataset.id)
        jobs = [job_create(user=user, dataset=dataset.id, adapter_name=f"load-{i}-{j}", **JOB).id for j in range(3)]
        for job_id in jobs:
            for seq in range(20):
                job_event_add(job_id=job_id, type="training", message=f"step {seq}", data={"step": seq})
        fixtures.append({"token": token_create(user=user), "dataset": dataset.id, "jobs": jobs})
    return fixtures


def server_start(env: dict[str, str], port: int, web_workers: int | None) -> subprocess.Popen:
    """`python -m api.web`, the launcher's web command; WEB_WORKERS from --web-workers, else the setting's default."""
    argv = [sys.executable, "-m", "api.web", "--host", "127.0.0.1", "--port", str(port)]
    workers = {"WEB_WORKERS": str(web_workers)} if web_workers else {}
    return subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env, **workers}, start_new_session=True)


async def server_wait(base: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{base}/api/v1/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.3)
    raise SystemExit(f"the web server did not answer /api/v1/health on {base} within {timeout} s")


async def server_warm(base: str, fixture: dict[str, Any]) -> None:
    """One request of each kind, one at a time: the first submission imports the model code (seconds)."""
    import httpx

    headers = {"Authorization": f"Bearer {fixture['token']}"}
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=headers, timeout=60) as http:
        job_id = fixture["jobs"][0]
        for response in [await http.get(f"/jobs/{job_id}"), await http.get(f"/jobs/{job_id}/events"),
                         await http.get("/jobs"),
                         await http.post("/jobs", json={**JOB, "dataset": fixture["dataset"], "adapter_name": "warm"})]:
            if response.status_code >= 300:
                raise SystemExit(f"warm-up: {response.request.method} {response.request.url} answered "
                                 f"{response.status_code}: {response.text[:300]}")


async def client_loop(base: str, fixture: dict[str, Any], until: float, record_from: float, think: float,
                      samples: dict[str, list[float]], errors: dict[str, int], seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    after = {job_id: 0 for job_id in fixture["jobs"]}
    headers = {"Authorization": f"Bearer {fixture['token']}"}
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=headers, timeout=30) as http:
        submitted = 0
        while (now := time.monotonic()) < until:
            kind = rng.choices(kinds, weights)[0]
            job_id = rng.choice(fixture["jobs"])
            started = time.perf_counter()
            if kind == "poll":
                response = await http.get(f"/jobs/{job_id}")
            elif kind == "events":
                response = await http.get(f"/jobs/{job_id}/events", params={"after": after[job_id]})
                if response.status_code == 200:
                    after[job_id] = response.json()["last_seq"]
            elif kind == "list":
                response = await http.get("/jobs")
            else:
                submitted += 1
                response = await http.post("/jobs", json={**JOB, "dataset": fixture["dataset"],
                                                          "adapter_name": f"sub-{seed}-{submitted}"})
            elapsed = time.perf_counter() - started
            if now >= record_from:
                if response.status_code >= 300:
                    errors[f"{kind} {response.status_code}"] = errors.get(f"{kind} {response.status_code}", 0) + 1
                else:
                    samples[kind].append(elapsed)
            if think:
                await asyncio.sleep(rng.uniform(0, 2 * think))


async def run_once(base: str, fixtures: list[dict[str, Any]], seconds: float, warmup: float, think: float,
                   seed: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {kind: [] for kind in MIX}
    errors: dict[str, int] = {}
    start = time.monotonic()
    await asyncio.gather(*(client_loop(base, f, start + warmup + seconds, start + warmup, think, samples, errors,
                                       seed * 1000 + i) for i, f in enumerate(fixtures)))
    result: dict[str, Any] = {"errors": errors}
    for kind, values in samples.items():
        values.sort()
        result[kind] = {"requests": len(values), "per_second": round(len(values) / seconds, 1),
                        "p50_ms": round(1000 * percentile(values, 50), 1) if values else None,
                        "p99_ms": round(1000 * percentile(values, 99), 1) if values else None}
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (uvicorn --workers forks them)."""
    total = 0.0
    for task in [pid, *children(pid)]:
        fields = Path(f"/proc/{task}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def percentile(sorted_values: list[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for kind in MIX:
        out[kind] = {key: statistics.median(r[kind][key] for r in runs)
                     for key in ("requests", "per_second", "p50_ms", "p99_ms")}
    out["total_per_second"] = round(statistics.median(sum(r[k]["per_second"] for k in MIX) for r in runs), 1)
    out["server_cpu_ms_per_request"] = statistics.median(r["server_cpu_ms_per_request"] for r in runs)
    out["client_cpu_ms_per_request"] = statistics.median(r["client_cpu_ms_per_request"] for r in runs)
    return out


def table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"{args.clients} clients, think {args.think_ms} ms, {args.web_workers} web worker(s), "
             f"{args.runs} x {args.seconds} s, medians",
             f"{'request':<28} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}"]
    names = {"poll": "GET /jobs/{id}", "events": "GET /jobs/{id}/events?after=", "list": "GET /jobs",
             "submit": "POST /jobs"}
    for kind, name in names.items():
        row = summary[kind]
        lines.append(f"{name:<28} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['per_second']:>8}")
    lines.append(f"{'all':<28} {'':>8} {'':>8} {summary['total_per_second']:>8}")
    lines.append(f"CPU per request: web server {summary['server_cpu_ms_per_request']} ms, load generator "
                 f"{summary['client_cpu_ms_per_request']} ms")
    return "\n".join(lines)


def redis_clean(env: dict[str, str]) -> None:
    import redis

    client = redis.Redis.from_url(env["REDIS_URL"])
    for key in client.scan_iter(f"{env['BROKER_KEY_PREFIX']}*", count=1000):
        client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before each run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--think-ms", type=float, default=1000, help="mean pause between a client's requests")
    parser.add_argument("--web-workers", type=int, default=None,
                        help="WEB_WORKERS for the web process (default: the setting's, 2)")
    parser.add_argument("--database", default="foundry_bench")
    parser.add_argument("--out", type=Path, default=RESULTS / "api_load.json")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from storage import embedded

    tmp = Path(tempfile.mkdtemp(prefix="foundry-bench-"))
    s3_port, web_port = embedded.free_port(), embedded.free_port()
    env = environment(args, tmp, s3_port)
    os.environ.update(env, DJANGO_SETTINGS_MODULE="api.settings")
    seaweed = embedded.seaweedfs_start(tmp / "seaweedfs", s3_port=s3_port, access_key="bench",
                                       secret_key="bench-secret")
    server = None
    try:
        database_recreate(args.database)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, check=True,
                       env={**os.environ, **env})
        t0 = time.monotonic()
        fixtures = fixtures_create(args.clients)
        print(f"fixtures: {args.clients} users, {3 * args.clients} jobs in {time.monotonic() - t0:.0f} s")
        from django.conf import settings

        args.web_workers = args.web_workers or settings.WEB_WORKERS
        server = server_start(env, web_port, args.web_workers)
        base = f"http://127.0.0.1:{web_port}"
        asyncio.run(server_wait(base))
        asyncio.run(server_warm(base, fixtures[0]))
        runs = []
        for run in range(args.runs):
            cpu, load, mine = cpu_seconds(server.pid), os.getloadavg()[0], time.process_time()
            result = asyncio.run(run_once(base, fixtures, args.seconds, args.warmup, args.think_ms / 1000, run))
            requests = sum(result[k]["requests"] for k in MIX)
            # The warm-up's requests are not counted, its CPU is: an upper bound per request.
            result["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(server.pid) - cpu) / max(1, requests), 1)
            # The load generator shares the 2 cores: what it spends is CPU the server did not have.
            result["client_cpu_ms_per_request"] = round(1000 * (time.process_time() - mine) / max(1, requests), 1)
            result["load_average_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            print(f"run {run + 1}: " + ", ".join(f"{k} p99 {result[k]['p99_ms']} ms" for k in MIX)
                  + f"; server CPU {result['server_cpu_ms_per_request']} ms/request, client "
                  + f"{result['client_cpu_ms_per_request']}; load {result['load_average_1m']}"
                  + (f"; errors {result['errors']}" if result["errors"] else ""))
            runs.append(result)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        embedded.stop(seaweed)
        redis_clean(env)
    summary = medians(runs)
    print(table(summary, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"config": config,
                                    "mix": MIX, "cpus": os.cpu_count(), "median": summary, "runs": runs},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
