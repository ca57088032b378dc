"""deploy/docker-compose.yml passes `docker-compose config` (Debian's docker-compose validates without a Docker
engine; `make test` and .ci/run install it) and holds every process of the service."""

import shutil
from pathlib import Path

import pytest

from tests.deploy.files import COMPOSE, COMPOSE_ENV, compose_config, compose_services


@pytest.fixture(autouse=True)
def docker_compose() -> None:
    if not shutil.which("docker-compose"):
        pytest.fail("docker-compose is not installed: `make test` installs Debian's package "
                    "(apt-get install docker-compose); this check must not be skipped")


def test_docker_compose_config_accepts_the_file() -> None:
    result = compose_config()
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period: 5m", "stop_grace_period: [5m]"))
    result = compose_config(broken)
    assert result.returncode != 0 and "stop_grace_period" in result.stderr


def test_compose_holds_every_process_and_the_services_they_need() -> None:
    services = compose_services()
    assert set(services) == {"postgres", "redis", "s3", "migrate", "web", "inference", "worker-light", "beat",
                             "worker-train", "worker-train-gpu"}
    for name in ("web", "inference", "worker-light", "beat", "worker-train"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_gpu_training_workers_reserve_a_gpu_and_train_on_it() -> None:
    gpu = compose_services()["worker-train-gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1
    assert gpu["environment"]["TRAIN_DEVICE"] == "cuda"
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert gpu["profiles"] == ["gpu"]  # `up` without --profile gpu still works on a machine with no GPU


@pytest.mark.parametrize("secret", sorted(COMPOSE_ENV))
def test_compose_refuses_to_start_without_each_secret(secret: str) -> None:
    result = compose_config(env={k: v for k, v in COMPOSE_ENV.items() if k != secret})
    assert result.returncode != 0 and f"set {secret}" in result.stderr
