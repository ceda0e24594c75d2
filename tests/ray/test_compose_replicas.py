"""docker-compose.replicas.yml: replicas on one store volume, behind nginx (deploy/nginx/replicas.conf) that sends
the requests of one task to one replica. Structure without Docker; the nginx config is loaded by a real nginx
when one is installed (``nginx -t``, then two stand-in replicas behind it: one task, one replica; no task, both)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "replicas.conf"
REPLICA_HEADER = "X-AdaptFormer-Replica"


def test_replicas_share_the_store_behind_one_proxy() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.replicas.yml").read_text())
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    server, proxy = compose["services"]["server"], compose["services"]["proxy"]
    assert "ports" not in server, "replicas publish nothing: the proxy is the way in"
    assert server["volumes"] == base["services"]["server"]["volumes"]  # the same named store volume
    assert set(compose["volumes"]) == set(base["volumes"])
    assert server["environment"]["ADAPTFORMER_STORE_POLL_MS"].startswith("${ADAPTFORMER_STORE_POLL_MS")
    assert server["deploy"]["replicas"] == "${ADAPTFORMER_REPLICAS:-3}"
    assert proxy["ports"] == base["services"]["server"]["ports"]
    (mount,) = proxy["volumes"]
    source, target, mode = mount.split(":")
    assert (ROOT / source).resolve() == NGINX_CONF and target == "/etc/nginx/conf.d/default.conf" and mode == "ro"
    assert proxy["read_only"] is True and "/var/cache/nginx" in proxy["tmpfs"]
    # the server service mirrors docker-compose.yml's, except for the published port and the poll interval
    for key in ("image", "build", "healthcheck", "read_only", "tmpfs", "security_opt", "stop_grace_period"):
        assert server[key] == base["services"]["server"][key], key
    extra = set(server["environment"]) - set(base["services"]["server"]["environment"])
    assert extra == {"ADAPTFORMER_STORE_POLL_MS"}


def test_the_proxy_hashes_on_the_task_and_retries() -> None:
    conf = NGINX_CONF.read_text()
    assert "hash $adaptformer_affinity consistent;" in conf
    assert "default $arg_task;" in conf and '""      $request_id;' in conf  # no task: spread at random
    assert "server server:8000" in conf  # the compose service: every replica's address
    assert "proxy_next_upstream error timeout http_502 http_503 non_idempotent;" in conf
    assert "client_max_body_size 160m;" in conf


class _Replica(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header(REPLICA_HEADER, self.server.server_address[1].__str__())
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def replicas(n: int) -> Iterator[list[int]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Replica) for _ in range(n)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield [s.server_address[1] for s in servers]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


@contextmanager
def nginx(tmp: Path, upstreams: list[int]) -> Iterator[str]:
    """deploy/nginx/replicas.conf under a real nginx, its ``server server:8000`` line replaced by ``upstreams``."""
    conf = NGINX_CONF.read_text()
    port = free_port()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in upstreams)
    conf = conf.replace("    server server:8000 max_fails=1 fail_timeout=5s;\n", servers)
    conf = conf.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    (tmp / "logs").mkdir()
    (tmp / "default.conf").write_text(conf)
    (tmp / "nginx.conf").write_text(
        f"pid {tmp}/nginx.pid;\nerror_log {tmp}/logs/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n"
        f"  include {tmp}/default.conf;\n}}\n"
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    args = [binary, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "logs" / "error.log")]
    checked = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([*args, "-g", "daemon off;"], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx is not installed"
)
def test_nginx_sends_one_task_to_one_replica_and_spreads_the_rest(tmp_path: Path) -> None:
    with replicas(3) as ports, nginx(tmp_path, ports) as url, httpx.Client(base_url=url, timeout=10) as c:
        homes: dict[str, set[str]] = {}
        for i in range(60):
            for _ in range(3):
                r = c.get(f"/predict?task=t{i}")
                homes.setdefault(f"t{i}", set()).add(r.headers[REPLICA_HEADER])
        assert all(len(h) == 1 for h in homes.values()), "a task's requests went to several replicas"
        tasks_per_replica = Counter(next(iter(h)) for h in homes.values())
        assert len(tasks_per_replica) == 3 and min(tasks_per_replica.values()) >= 5, tasks_per_replica
        untasked = Counter(c.get("/readyz").headers[REPLICA_HEADER] for _ in range(60))
        assert len(untasked) == 3, untasked
