"""The `foundry` command (run as `python -m api.cli`, a separate process speaking HTTP only) against a live
server and a real worker: log in, upload, train while watching, list, move an alias, download, cancel."""

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from api.accounts.services import token_create

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"prompt": f"say {w}", "completion": w} for w in ("yes", "no", "maybe")] * 4


@pytest.fixture
def foundry(tmp_path: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_") and k != "XDG_CONFIG_HOME"}
    env["HOME"] = str(tmp_path)

    def run(*args: str, ok: bool = True, **extra_env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=ROOT, env={**env, **extra_env},
                              capture_output=True, text=True, timeout=600)
        if ok:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    return run


def test_cli_trains_watches_aliases_downloads_and_cancels(live_server: Any, worker: object, foundry: Any,
                                                          tmp_path: Path) -> None:
    token = token_create(user=get_user_model().objects.create_user(username="dave"))
    assert "not logged in" in foundry("datasets", "list", ok=False).stderr
    foundry("login", "--url", live_server.url, "--token", token)
    config = tmp_path / ".config" / "foundry" / "config.json"
    assert json.loads(config.read_text()) == {"url": live_server.url, "token": token}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    dataset = json.loads(foundry("--json", "datasets", "upload", str(data), "--task", "sft", "--wait").stdout)
    assert dataset["status"] == "ready" and dataset["rows"] == len(ROWS)
    assert "train.jsonl" in foundry("datasets", "list").stdout
    assert json.loads(foundry("--json", "datasets", "show", str(dataset["id"])).stdout)["id"] == dataset["id"]

    trained = foundry("jobs", "create", "--base-model", "tiny-llama", "--task", "sft", "--dataset",
                      str(dataset["id"]), "--config", '{"r": 4}', "--hp", "epochs=3", "--hp", "batch_size=4",
                      "--adapter", "cli-chat", "--watch", "--interval", "0.2")
    assert "succeeded: cli-chat@1" in trained.stdout
    assert "[##############################] 100%" in trained.stderr and "loss " in trained.stderr
    assert "started: running on" in trained.stderr  # events stream in as they happen
    listed = foundry("jobs", "list").stdout
    assert "cli-chat@1" in listed and "succeeded" in listed

    assert "cli-chat" in foundry("adapters", "list").stdout
    foundry("aliases", "set", "cli-chat", "production", "1")
    assert "production" in foundry("adapters", "versions", "cli-chat").stdout
    foundry("adapters", "download", "cli-chat@production", "--extract", str(tmp_path / "adapter"))
    assert {"adapter_config.json", "adapter_model.safetensors", "foundry.json"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()}
    foundry("adapters", "download", "cli-chat", "-o", str(tmp_path / "latest.zip"))
    assert zipfile.ZipFile(tmp_path / "latest.zip").testzip() is None
    foundry("aliases", "drop", "cli-chat", "production")
    assert "production" not in foundry("adapters", "versions", "cli-chat").stdout

    # long enough (1,200 steps) that the cancel always lands first, whether the worker has started it or not
    queued = json.loads(foundry("--json", "jobs", "create", "--base-model", "tiny-llama", "--task", "sft",
                                "--dataset", str(dataset["id"]), "--adapter", "cli-other", "--hp", "epochs=100",
                                "--hp", "batch_size=1").stdout)
    foundry("cancel", str(queued["id"]))
    watched = foundry("jobs", "watch", str(queued["id"]), "--interval", "0.2", ok=False)
    assert watched.returncode == 1 and f"job {queued['id']} cancelled" in watched.stdout

    refused = foundry("jobs", "list", ok=False, FOUNDRY_TOKEN="af_wrong")  # the environment wins over the file
    assert refused.returncode == 1 and "401" in refused.stderr
    missing = foundry("jobs", "show", "999999", ok=False)
    assert missing.returncode == 1 and "404" in missing.stderr
