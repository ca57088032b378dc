"""`foundry`: the service from a terminal. A plain HTTP client of /api/v1 (standard library only).

    foundry login --url http://127.0.0.1:8000 --token af_...
    foundry datasets upload train.jsonl --task sft --wait
    foundry jobs create --base-model tiny-llama --task sft --dataset 1 --adapter chat --hp epochs=3 --watch
    foundry adapters download chat@latest --extract chat/

The URL and token come from FOUNDRY_URL / FOUNDRY_TOKEN when set, else from the file `login` writes
(~/.config/foundry/config.json, mode 0600). `--json` prints the API's JSON instead of tables."""

import argparse
import getpass
import json
import mimetypes
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FINAL = {"succeeded", "failed", "cancelled"}


class CliError(Exception):
    pass


def config_path() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "foundry" / "config.json"


def config_load() -> dict[str, str]:
    path = config_path()
    stored = json.loads(path.read_text()) if path.exists() else {}
    url = os.environ.get("FOUNDRY_URL") or stored.get("url")
    token = os.environ.get("FOUNDRY_TOKEN") or stored.get("token")
    if not url or not token:
        raise CliError("not logged in: run `foundry login --url URL --token TOKEN` (or set FOUNDRY_URL and "
                       "FOUNDRY_TOKEN)")
    return {"url": url.rstrip("/"), "token": token}


def config_save(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": url.rstrip("/"), "token": token}, out)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT
    return path


class Api:
    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def open(self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None,
             query: dict[str, Any] | None = None) -> Any:
        url = f"{self.url}/api/v1{path}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        all_headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json", **(headers or {})}
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
        try:
            return urllib.request.urlopen(request, timeout=300)
        except urllib.error.HTTPError as exc:
            raise CliError(_error_text(exc)) from None
        except OSError as exc:
            raise CliError(f"cannot reach {self.url}: {exc}") from None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.open(method, path, **kwargs) as response:
            data = response.read()
        return json.loads(data) if data else None

    def pages(self, path: str, query: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            data = self.call("GET", path, query={**(query or {}), "page": page})
            yield from data["results"]
            if not data.get("next"):
                return
            page += 1


def _error_text(exc: urllib.error.HTTPError) -> str:
    raw = exc.read().decode(errors="replace")
    try:
        error = json.loads(raw)["error"]
        param = f" [{error['param']}]" if error.get("param") else ""
        return f"{exc.code} {error.get('code', '')}: {error['message']}{param}"
    except (ValueError, KeyError, TypeError):
        return f"{exc.code}: {raw[:300]}"


def _multipart(path: Path, fields: dict[str, str]) -> tuple[Iterator[bytes], dict[str, str]]:
    """A multipart/form-data body that streams the file, with its exact Content-Length."""
    boundary = uuid.uuid4().hex
    head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in fields.items() if v)
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
             f"Content-Type: {kind}\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        yield head
        with open(path, "rb") as file:
            yield from iter(lambda: file.read(1024 * 1024), b"")
        yield tail

    size = len(head) + path.stat().st_size + len(tail)
    return chunks(), {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(size)}


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _show(args: argparse.Namespace, data: Any, columns: list[str] | None = None) -> None:
    if args.json or columns is None:
        print(json.dumps(data, indent=2))
    else:
        _table(data, columns)


def _pairs(items: list[str]) -> dict[str, Any]:
    """key=value pairs; values are read as JSON when they parse (numbers, lists), else as strings."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"expected key=value, got {item!r}")
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


def _progress_line(job: dict[str, Any], loss: float | None) -> str:
    progress = job["progress"]
    step, total = progress["step"], progress["total_steps"]
    fraction = min(1.0, step / total) if total else (1.0 if job["status"] == "succeeded" else 0.0)
    bar = "#" * round(fraction * 30)
    parts = [f"[{bar:<30}] {fraction:4.0%}", job["status"], f"step {step}/{total or '?'}",
             f"epoch {progress['epoch']:.2f}"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if progress.get("eta_seconds") and job["status"] == "running":
        parts.append(f"eta {progress['eta_seconds']}s")
    if job.get("queue_position"):
        parts.append(f"queue #{job['queue_position']}")
    return "  ".join(parts)


def job_watch(api: Api, job_id: int, interval: float) -> dict[str, Any]:
    """Poll until the job ends: a progress bar with the latest loss, and new events as they happen."""
    tty = sys.stderr.isatty()
    seq, step, loss, last = 0, -1, None, ""
    while True:
        job = api.call("GET", f"/jobs/{job_id}")
        events = api.call("GET", f"/jobs/{job_id}/events", query={"after": seq})
        metrics = api.call("GET", f"/jobs/{job_id}/metrics", query={"after_step": step})["data"]
        losses = [m for m in metrics if m.get("loss") is not None]
        if losses:
            loss = losses[-1]["loss"]
        if metrics:
            step = metrics[-1]["step"]
        for event in events["data"]:
            print(("\r\033[K" if tty else "") + f"  {event['type']}: {event['message']}", file=sys.stderr)
        seq = events["last_seq"]
        line = _progress_line(job, loss)
        if tty:
            print("\r\033[K" + line, end="", file=sys.stderr, flush=True)
        elif line != last:
            print(line, file=sys.stderr, flush=True)
        last = line
        if job["status"] in FINAL:
            if tty:
                print(file=sys.stderr)
            return job
        time.sleep(interval)


def cmd_login(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("FOUNDRY_URL") or "http://127.0.0.1:8000"
    token = args.token or os.environ.get("FOUNDRY_TOKEN") or getpass.getpass("API token: ")
    Api(url, token).call("GET", "/base-models")  # refuses a wrong URL or token before saving them
    print(f"logged in to {url}; saved to {config_save(url, token)}")
    return 0


def cmd_datasets(args: argparse.Namespace, api: Api) -> int:
    if args.action == "upload":
        path = Path(args.file)
        if not path.is_file():
            raise CliError(f"no file {path}")
        body, headers = _multipart(path, {"task": args.task, "name": args.name, "base_model": args.base_model})
        dataset = api.call("POST", "/datasets", body=body, headers=headers)
        while args.wait and dataset["status"] == "validating":
            time.sleep(0.5)
            dataset = api.call("GET", f"/datasets/{dataset['id']}")
        _show(args, dataset)
        return 1 if dataset["status"] == "invalid" else 0
    if args.action == "list":
        _show(args, list(api.pages("/datasets")), ["id", "name", "task", "status", "rows", "size_bytes",
                                                    "created_at"])
    else:
        _show(args, api.call("GET", f"/datasets/{args.id}"))
    return 0


def cmd_jobs(args: argparse.Namespace, api: Api) -> int:
    if args.action == "list":
        jobs = [{**j, "step": f"{j['progress']['step']}/{j['progress']['total_steps'] or '?'}",
                 "result": (j.get("result") or {}).get("ref")} for j in api.pages("/jobs", {"status": args.status})]
        _show(args, jobs, ["id", "status", "base_model", "method", "adapter_name", "step", "result", "created_at"])
        return 0
    if args.action == "show":
        _show(args, api.call("GET", f"/jobs/{args.id}"))
        return 0
    if args.action == "cancel":
        job = api.call("POST", f"/jobs/{args.id}/cancel")
        _show(args, job) if args.json else print(f"job {job['id']}: {job['status']}"
                                                  + (" (cancel requested)" if job["cancel_requested"] else ""))
        return 0
    if args.action == "create":
        job = api.call("POST", "/jobs", body={
            "base_model": args.base_model, "task": args.task, "dataset": args.dataset,
            "validation_dataset": args.validation_dataset, "method": args.method,
            "method_config": json.loads(args.config) if args.config else {}, "hyperparameters": _pairs(args.hp),
            "adapter_name": args.adapter, "priority": args.priority})
        if not args.watch:
            _show(args, job) if args.json else print(f"job {job['id']}: {job['status']}")
            return 0
        args.id = job["id"]
    job = job_watch(api, args.id, args.interval)
    if args.json:
        _show(args, job)
    elif job["status"] == "succeeded":
        print(f"job {job['id']} succeeded: {job['result']['ref']}")
    else:
        error = job.get("error") or {}
        print(f"job {job['id']} {job['status']}" + (f": {error.get('code')}: {error.get('message')}"
                                                    if error else ""))
    return 0 if job["status"] == "succeeded" else 1


def cmd_adapters(args: argparse.Namespace, api: Api) -> int:
    if args.action == "list":
        _show(args, list(api.pages("/adapters")), ["name", "version_count", "latest_version", "created_at"])
        return 0
    if args.action == "versions":
        versions = [{**v, "aliases": ",".join(v.get("aliases") or []), "tags": ",".join(v.get("tags") or [])}
                    for v in api.pages(f"/adapters/{args.name}/versions")]
        _show(args, versions, ["version", "aliases", "tags", "created_at"])
        return 0
    name, _, ref = args.ref.partition("@")
    ref = ref or "latest"
    with tempfile.TemporaryDirectory(prefix="foundry-") as tmp:
        # With --extract alone the zip is only a means: it goes to a temporary folder.
        target = Path(args.output or (Path(tmp) if args.extract else Path()) / f"{name}-{ref}.zip")
        with api.open("GET", f"/adapters/{name}/versions/{ref}/download") as response, open(target, "wb") as out:
            for chunk in iter(lambda: response.read(1024 * 1024), b""):
                out.write(chunk)
        if args.extract:
            with zipfile.ZipFile(target) as archive:
                archive.extractall(args.extract)
        print(f"{name}@{ref} -> {args.extract or target}")
    return 0


def cmd_aliases(args: argparse.Namespace, api: Api) -> int:
    if args.action == "set":
        alias = api.call("PUT", f"/adapters/{args.name}/aliases/{args.alias}", body={"version": args.version})
        _show(args, alias) if args.json else print(f"{args.name}@{args.alias} -> version {args.version}")
    else:
        api.call("DELETE", f"/adapters/{args.name}/aliases/{args.alias}")
        print(f"dropped {args.name}@{args.alias}")
    return 0


def parser_build() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foundry", description="Adapter Foundry from the command line.")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    commands = parser.add_subparsers(dest="command", required=True)

    login = commands.add_parser("login", help="store the service URL and an API token")
    login.add_argument("--url", help="e.g. http://127.0.0.1:8000")
    login.add_argument("--token", help="an API token (`manage.py createtoken`); asked for when missing")

    datasets = commands.add_parser("datasets", help="upload, list and show datasets").add_subparsers(
        dest="action", required=True)
    upload = datasets.add_parser("upload", help="upload a JSONL/CSV/TSV file")
    upload.add_argument("file")
    upload.add_argument("--task", required=True, choices=["classification", "sft", "token-classification"])
    upload.add_argument("--name", default="")
    upload.add_argument("--base-model", default="", help="tokenizer for the length stats")
    upload.add_argument("--wait", action="store_true", help="wait for validation; exit 1 if invalid")
    datasets.add_parser("list")
    datasets.add_parser("show").add_argument("id", type=int)

    jobs = commands.add_parser("jobs", help="create, list, show, watch and cancel jobs").add_subparsers(
        dest="action", required=True)
    create = jobs.add_parser("create", help="start a fine-tuning job")
    create.add_argument("--base-model", required=True)
    create.add_argument("--task", required=True, choices=["classification", "sft", "token-classification"])
    create.add_argument("--dataset", required=True, type=int)
    create.add_argument("--validation-dataset", type=int)
    create.add_argument("--method", default="lora")
    create.add_argument("--config", help='method config as JSON, e.g. \'{"r": 8}\'')
    create.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter (repeat)")
    create.add_argument("--adapter", required=True, help="adapter name: the registry entry the job publishes to")
    create.add_argument("--priority", type=int, default=5)
    create.add_argument("--watch", action="store_true", help="then watch it to the end")
    jobs.add_parser("list").add_argument("--status")
    for action in ("show", "watch", "cancel"):
        jobs.add_parser(action).add_argument("id", type=int)
    for sub in (create, jobs.choices["watch"]):
        sub.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    commands.add_parser("cancel", help="cancel a job (= jobs cancel)").add_argument("id", type=int)

    adapters = commands.add_parser("adapters", help="list adapters and versions, download one").add_subparsers(
        dest="action", required=True)
    adapters.add_parser("list")
    adapters.add_parser("versions").add_argument("name")
    download = adapters.add_parser("download", help="a version's files as one zip")
    download.add_argument("ref", help="name@version, name@alias or name (latest)")
    download.add_argument("-o", "--output", help="zip path (default NAME-REF.zip)")
    download.add_argument("--extract", metavar="DIR", help="unzip into DIR (a folder peft loads)")

    aliases = commands.add_parser("aliases", help="move or drop an alias").add_subparsers(dest="action",
                                                                                       required=True)
    move = aliases.add_parser("set", help="point NAME@ALIAS at VERSION")
    move.add_argument("name")
    move.add_argument("alias")
    move.add_argument("version", type=int)
    drop = aliases.add_parser("drop")
    drop.add_argument("name")
    drop.add_argument("alias")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser_build().parse_args(argv)
    try:
        if args.command == "login":
            return cmd_login(args)
        config = config_load()
        api = Api(config["url"], config["token"])
        if args.command == "cancel":
            args.action = "cancel"
            return cmd_jobs(args, api)
        handler = {"datasets": cmd_datasets, "jobs": cmd_jobs, "adapters": cmd_adapters, "aliases": cmd_aliases}
        return handler[args.command](args, api)
    except CliError as exc:
        print(f"foundry: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
