"""The images are built with the commands `make` runs: the same pip installs in the same order (torch pinned
first, then the project), the same npm steps for the UI's assets, on the Python pyproject.toml requires."""

import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy.files import DEPLOY, DOCKERFILES, ROOT, dockerfile_runs, makefile_recipe, pip_install

MAKE_INSTALL = ".venv/.installed"  # $(STAMP)
MAKE_FRONTEND = "frontend/static/frontend/vendor/chart.umd.min.js"


def _pip_steps(commands: list[str]) -> list[list[str]]:
    return [args for args in map(pip_install, commands) if args is not None]


def test_the_makefile_installs_torch_pinned_then_the_project() -> None:
    steps = _pip_steps(makefile_recipe(MAKE_INSTALL))
    assert steps == [["--upgrade", "pip"], ["torch==2.13.0"], ["."]], steps


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pip_installs_are_the_makefiles(dockerfile: Path) -> None:
    assert _pip_steps(dockerfile_runs(dockerfile)) == _pip_steps(makefile_recipe(MAKE_INSTALL))


def test_the_cpu_image_takes_torch_from_the_cpu_index_and_the_cuda_image_from_a_cuda_one() -> None:
    def torch_index(path: Path) -> str:
        [command] = [c for c in dockerfile_runs(path) if "torch==" in c]
        return command.split("--index-url", 1)[1].split()[0]

    assert torch_index(DEPLOY / "Dockerfile").endswith("/whl/cpu")
    assert re.search(r"/whl/cu\d+$", torch_index(DEPLOY / "Dockerfile.cuda"))


def test_the_cpu_image_builds_the_ui_assets_with_makes_npm_steps() -> None:
    make_steps = makefile_recipe(MAKE_FRONTEND)
    assert [c for c in _cd_joined(dockerfile_runs(DEPLOY / "Dockerfile")) if c in make_steps] == make_steps


def _cd_joined(commands: list[str]) -> list[str]:
    """Commands split at && with a `cd DIR` joined back to the command it prefixes, as the Makefile writes it."""
    out, prefix = [], ""
    for command in commands:
        if command.startswith("cd "):
            prefix = f"{command} && "
            continue
        out.append(prefix + command)
        prefix = ""
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_python_is_the_one_pyproject_requires(dockerfile: Path) -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    text = dockerfile.read_text()
    assert "FROM python:3.11-slim" in text or "python3.11 -m venv" in text


def test_a_dockerfile_that_drifts_from_make_is_caught(tmp_path: Path) -> None:
    drifted = tmp_path / "Dockerfile"
    drifted.write_text((DEPLOY / "Dockerfile").read_text().replace("torch==2.13.0", "torch==2.5.0"))
    assert _pip_steps(dockerfile_runs(drifted)) != _pip_steps(makefile_recipe(MAKE_INSTALL))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_build_context_sends_only_what_the_image_copies(dockerfile: Path) -> None:
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("**") + 1:][:6] == ["!pyproject.toml", "!manage.py", "!api/", "!workers/", "!storage/",
                                                    "!frontend/"]  # not .venv/, var/ or .git/ (gigabytes)
    copied = {source.split("/")[0] for line in dockerfile.read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line for source in line.split()[1:-1]}
    assert copied <= {"pyproject.toml", "manage.py", "api", "workers", "storage", "frontend"}, copied
