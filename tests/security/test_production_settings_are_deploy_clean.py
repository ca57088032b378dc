import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    base.update(DJANGO_SETTINGS_MODULE="api.settings", FOUNDRY_VAR_DIR=str(tmp_path), **env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True, text=True)


def test_check_deploy_prints_no_warnings_under_production_settings(tmp_path: Path) -> None:
    result = _run(tmp_path, "check", "--deploy", FOUNDRY_PRODUCTION="true", SECRET_KEY=secrets.token_urlsafe(50),
                  ALLOWED_HOSTS="foundry.example.com")
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout, result.stdout + result.stderr


def test_production_refuses_debug_and_a_missing_secret_key(tmp_path: Path) -> None:
    no_key = _run(tmp_path, "check", FOUNDRY_PRODUCTION="true")
    assert no_key.returncode != 0 and "SECRET_KEY must be set" in no_key.stderr
    debug = _run(tmp_path, "check", FOUNDRY_PRODUCTION="true", SECRET_KEY=secrets.token_urlsafe(50), DEBUG="true")
    assert debug.returncode != 0 and "DEBUG must be off" in debug.stderr
