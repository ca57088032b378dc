import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.env import EnvError, env_bool, env_int
from workers.methods.registry import ConfigError, config_resolve, method_config_resolve
from workers.training.hyperparameters import Hyperparameters

ROOT = Path(__file__).resolve().parents[2]


def test_lora_defaults_are_filled_in() -> None:
    resolved = method_config_resolve("lora", {"r": 4})
    assert {k: resolved[k] for k in ("r", "alpha", "dropout", "target_modules")} == {
        "r": 4, "alpha": 16, "dropout": 0.05, "target_modules": None}


@pytest.mark.parametrize(
    ("raw", "param"),
    [({"r": 0}, "method_config.r"), ({"r": 257}, "method_config.r"), ({"dropout": 1.5}, "method_config.dropout"),
     ({"rank": 4}, "method_config.rank"), ({"target_modules": []}, "method_config.target_modules")],
)
def test_lora_config_out_of_bounds_names_the_field(raw: dict, param: str) -> None:
    with pytest.raises(ConfigError) as err:
        method_config_resolve("lora", raw)
    assert err.value.param == param


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        method_config_resolve("nope", {})


def test_hyperparameters_bounds() -> None:
    with pytest.raises(ConfigError) as err:
        config_resolve(Hyperparameters, {"batch_size": 0}, param="hyperparameters")
    assert err.value.param == "hyperparameters.batch_size"
    with pytest.raises(ConfigError):
        config_resolve(Hyperparameters, [1, 2], param="hyperparameters")


def test_env_helpers_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "maybe")
    with pytest.raises(EnvError, match="X_BOOL"):
        env_bool("X_BOOL")
    monkeypatch.setenv("X_INT", "12a")
    with pytest.raises(EnvError, match="X_INT"):
        env_int("X_INT", 1)
    monkeypatch.setenv("X_INT", "0")
    with pytest.raises(EnvError, match="below the minimum"):
        env_int("X_INT", 1, minimum=1)


def test_production_refuses_to_start_without_secret_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env.update(FOUNDRY_PRODUCTION="true", DJANGO_SETTINGS_MODULE="api.settings", FOUNDRY_VAR_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
    env["SECRET_KEY"] = "x" * 50
    assert subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env).returncode == 0
