"""Readers for the deployment files and for what `make` and `manage.py launch` run, so the tests can compare them.

A command is normalised before comparing: the interpreter is "python", and the values that are addresses or
names (host, port, node name, beat schedule path) are masked. A worker's queues are reduced to their kind:
"train" for training queues (train, train-24g, ...), "default" for the light one."""

import functools
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]
APP_IMAGE = "adapter-foundry"
# What a real `docker compose up` would take from the operator's environment (compose refuses to start without).
COMPOSE_ENV = {"SECRET_KEY": "k" * 50, "POSTGRES_PASSWORD": "pg-password", "S3_SECRET_ACCESS_KEY": "s3-secret"}
# Setup steps of `manage.py launch` (handle(): call_command("migrate"), then s3.bucket_ensure()), as one container.
SETUP_COMMAND = ["/bin/sh", "-c", "python manage.py migrate --noinput && "
                 "python manage.py shell -c 'from storage import s3; s3.bucket_ensure()'"]

MASKED = {"--host", "--port", "-n", "-s"}
QUEUES = re.compile(r"^(train(-[a-z0-9]+)?|default)(,(train(-[a-z0-9]+)?|default))*$")


def normalise(argv: list[str]) -> list[str]:
    out: list[str] = []
    for i, token in enumerate(argv):
        previous = argv[i - 1] if i else ""
        if i == 0 and Path(token).name.startswith("python"):
            out.append("python")
        elif previous in MASKED:
            out.append("<value>")
        elif previous == "-Q":
            assert QUEUES.match(token), f"queue list {token!r} in {argv}: expected train, train-<class> or default"
            kinds = {"default" if q == "default" else "train" for q in token.split(",")}
            assert len(kinds) == 1, f"{argv}: one worker mixes training and light queues ({token})"
            out.append(kinds.pop())
        else:
            out.append(token)
    return out


def launcher_commands() -> dict[str, list[str]]:
    """The argv of every process `manage.py launch` starts, by name, without starting any."""
    from api.management.commands import launch

    command = launch.Command()
    command.children = []
    original = launch.Child.start
    launch.Child.start = lambda self: None  # type: ignore[method-assign]
    try:
        command._start_children(no_workers=False)
    finally:
        launch.Child.start = original  # type: ignore[method-assign]
    return {child.name: normalise(child.argv) for child in command.children}


def compose_config(path: Path = COMPOSE, env: dict[str, str] = COMPOSE_ENV) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "-f", str(path), "config"], capture_output=True, text=True,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env}, timeout=60)


@functools.cache
def compose_services() -> dict[str, Any]:
    """Services as `docker-compose config` resolves them (anchors merged, variables filled in)."""
    result = compose_config()
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def compose_app_services() -> dict[str, Any]:
    return {name: s for name, s in compose_services().items() if s.get("image", "").startswith(APP_IMAGE)}


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def k8s_containers() -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, container) for every container of every workload."""
    found = []
    for _, doc in k8s_documents():
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        for container in (pod or {}).get("containers", []):
            found.append((f"{doc['kind']}/{doc['metadata']['name']}", container))
    return found


def procfile_commands() -> dict[str, list[str]]:
    lines = [line for line in (DEPLOY / "Procfile").read_text().splitlines() if line and not line.startswith("#")]
    return {name.strip(): shlex.split(command) for name, command in (line.split(":", 1) for line in lines)}


def _logical_lines(text: str) -> list[str]:
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def makefile_recipe(target: str) -> list[str]:
    """The recipe lines of a Makefile target, with the Makefile's own variables expanded."""
    lines = _logical_lines((ROOT / "Makefile").read_text())
    variables = {}
    for line in lines:
        if match := re.match(r"^([A-Z_]+)\s*[:?]?=\s*(.*)$", line):
            variables[match[1]] = match[2].strip()

    def expand(text: str) -> str:
        for _ in range(5):
            text = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m[1], m[0]), text)
        return text

    recipe, inside = [], False
    for line in lines:
        if not line.startswith("\t"):
            inside = expand(line.split(":", 1)[0]).strip() == target and ":" in line
            continue
        if inside and not line.strip().startswith("#"):
            recipe.append(expand(line.strip()))
    assert recipe, f"Makefile: no recipe for {target}"
    return recipe


def dockerfile_runs(path: Path) -> list[str]:
    """Every command of every RUN instruction, split at &&."""
    commands = []
    for line in _logical_lines(path.read_text()):
        if line.startswith("RUN "):
            commands += [part.strip() for part in line[4:].split("&&")]
    return commands


def pip_install(command: str) -> list[str] | None:
    """`pip install` arguments without the options that only say how to fetch (quiet, cache, index, editable),
    and without the dev extras (the test tools stay out of the image); None when it is no pip install."""
    argv = shlex.split(command)
    if not argv or not Path(argv[0]).name.startswith("python") or argv[1:4] != ["-m", "pip", "install"]:
        return None
    out, skip = [], False
    for token in argv[4:]:
        if skip:
            skip = False
        elif token in {"--index-url", "--extra-index-url"}:
            skip = True
        elif token not in {"-q", "--no-cache-dir", "-e"}:
            out.append(".") if token == ".[dev]" else out.append(token)
    return out


def env_names_known() -> set[str]:
    """Variables api/settings.py reads, plus those README.md's Configuration table names."""
    settings_src = (ROOT / "api" / "settings.py").read_text()
    names = set(re.findall(r"env_(?:str|int|bool|json|list)\(\s*\"([A-Z0-9_]+)\"", settings_src))
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for row in table.splitlines():
        if row.startswith("| `"):
            names |= set(re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1]))
    return names
