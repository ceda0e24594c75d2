"""Schema fuzzing: schemathesis against the server's own OpenAPI schema (/openapi.json): no 5xx, bounded examples.

Runs the schemathesis CLI in a subprocess (its Python API changes between major versions) against the keyed
server, sending the admin key so that generated requests reach the handlers instead of stopping at 401.
SCHEMATHESIS_EXAMPLES (default 25 per operation) raises the bound for a longer run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from benchmarks.reliability import ADMIN_KEY, Server

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("schemathesis")
    if found is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    return [found]


# Random task names stop most requests at 404 before the body is read: name a task that exists for the routes
# that read a body or a model (never for DELETE, which would remove it).
CONFIG = """
[[operations]]
include-path-regex = "^/predict$"
parameters = { "query.task" = "t00" }

[[operations]]
include-path-regex = "^/v2/models/[{]task[}]"
include-method-regex = "^(GET|POST)$"
parameters = { "path.task" = "t00" }

[[operations]]
include-path-regex = "^/adapters/[{]task[}]$"
include-method = "GET"
parameters = { "path.task" = "t00" }
"""


def test_schemathesis_finds_no_server_error(keyed_server: Server, tmp_path: Path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [
        *_cli(),
        "--config-file",
        str(config),
        "run",
        f"{keyed_server.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "1",
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--no-shrink",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--header",
        f"Authorization: Bearer {ADMIN_KEY}",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    print(out[-4000:])  # the summary: operations, test cases, failures (pytest -rA shows it)
    assert proc.returncode == 0, out[-6000:]
    assert keyed_server.alive()
    assert httpx.get(f"{keyed_server.url}/healthz", timeout=10).status_code == 200
    log = keyed_server.log_tail(200_000)
    assert "internal error" not in log, log[-4000:]
