"""Nothing in deploy/ differs from what the tests and `make run` run, except the services' addresses: every
process is one `manage.py launch` starts (a light worker may leave the scheduler to the one beat process),
and every variable the files set is a setting (api/settings.py or README.md's Configuration table)."""

from typing import Any

import pytest

from tests.deploy.files import (
    DOCKERFILES,
    SETUP_COMMAND,
    compose_app_services,
    env_names_known,
    k8s_containers,
    k8s_documents,
    launcher_commands,
    normalise,
    procfile_commands,
)

# Set by the images or the platform for tools other than ours: the Hugging Face cache, Python, pip, apt, and
# Kubernetes' downward API (the pod's name, used in worker node names).
THIRD_PARTY = {"HF_HOME", "HF_HUB_OFFLINE", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK", "DEBIAN_FRONTEND",
               "PATH", "POD_NAME"}


def _allowed() -> list[list[str]]:
    launcher = launcher_commands()
    light = launcher["worker-light"]
    beat_at = light.index("-B")
    light_without_beat = light[:beat_at] + light[beat_at + 3:]
    return [*launcher.values(), light_without_beat]


def _deployed() -> dict[str, list[str]]:
    commands = {f"compose {name}": s["command"] for name, s in compose_app_services().items()}
    commands |= {f"k8s {name}": c["command"] for name, c in k8s_containers()}
    commands |= {f"Procfile {name}": argv for name, argv in procfile_commands().items()}
    return commands


@pytest.mark.parametrize("where", sorted(_deployed()))
def test_each_deployed_process_runs_a_launcher_command(where: str) -> None:
    command = _deployed()[where]
    assert command == SETUP_COMMAND or normalise(command) in _allowed(), (where, command)


def test_every_launcher_process_is_deployed_everywhere() -> None:
    launcher = launcher_commands()
    for source in ("compose", "k8s", "Procfile"):
        deployed = [normalise(c) for where, c in _deployed().items() if where.startswith(source)]
        missing = [name for name, argv in launcher.items() if argv not in deployed]
        assert not missing, f"{source} does not run {missing}"
    setups = [where for where, c in _deployed().items() if c == SETUP_COMMAND]
    assert sorted(s.split()[0] for s in setups) == ["compose", "k8s"]


def test_launch_still_migrates_and_creates_the_bucket() -> None:
    from api.management.commands import launch

    source = open(launch.__file__).read()
    assert 'call_command("migrate"' in source and "s3.bucket_ensure()" in source


def test_exactly_one_scheduler_everywhere() -> None:
    with_beat = [where for where, c in _deployed().items() if "-B" in c]
    assert sorted(w.split()[0] for w in with_beat) == ["Procfile", "compose", "k8s"], with_beat
    [beat] = [doc for _, doc in k8s_documents() if doc["metadata"]["name"] == "foundry-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"


def _env_set() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}

    def add(where: str, names: Any) -> None:
        found.setdefault(where, set()).update(names)

    for name, service in compose_app_services().items():
        add(f"compose {name}", service.get("environment", {}))
    for _, doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            add(f"k8s ConfigMap/{doc['metadata']['name']}", doc["data"])
    for name, container in k8s_containers():
        add(f"k8s {name}", (e["name"] for e in container.get("env", [])))
    for path in DOCKERFILES:
        for line in path.read_text().replace("\\\n", " ").splitlines():
            if line.startswith("ENV "):
                add(path.name, (pair.split("=", 1)[0] for pair in line[4:].split()))
    return found


def test_every_variable_the_deploy_files_set_is_a_setting() -> None:
    known = env_names_known() | THIRD_PARTY
    unknown = {where: sorted(names - known) for where, names in _env_set().items() if names - known}
    assert not unknown, f"not in api/settings.py nor README.md's Configuration table: {unknown}"


def test_a_misspelt_variable_would_be_caught() -> None:
    assert "S3_ENDPOINT" not in env_names_known() | THIRD_PARTY
    assert "S3_ENDPOINT_URL" in env_names_known()
