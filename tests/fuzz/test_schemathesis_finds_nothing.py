"""Schemathesis (all checks, every phase including stateful links) against /api/v1 on a live server,
as a signed-in user, with a bounded number of examples. A longer run: see README.md, "Fuzzing"."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import make_client

MAX_EXAMPLES = os.environ.get("FUZZ_MAX_EXAMPLES", "5")
ROOT = Path(__file__).resolve().parents[2]


def test_schemathesis_finds_nothing(live_server: Any, transactional_db: None, bucket: None, tmp_path: Path) -> None:
    token = make_client("fuzzer")._credentials["HTTP_AUTHORIZATION"]  # type: ignore[attr-defined]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(ROOT / "schemathesis.toml"), "run",
         f"{live_server.url}/api/schema/?format=json",
         "--checks", "all", "--max-examples", MAX_EXAMPLES, "--include-path-regex", "^/api/v1/",
         "-H", f"Authorization: {token}", "--workers", "1", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
