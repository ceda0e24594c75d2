"""docker-compose.replicas.yml: replicas on one store volume, behind a proxy (structure only; no Docker needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


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
    conf = proxy["command"][-1]
    assert "server server:8000" in conf and "proxy_next_upstream" in conf and "client_max_body_size" in conf
    assert "$$host" in conf  # nginx variables escaped from compose's interpolation
    # the server service mirrors docker-compose.yml's, except for the published port and the poll interval
    for key in ("image", "build", "healthcheck", "read_only", "tmpfs", "security_opt", "stop_grace_period"):
        assert server[key] == base["services"]["server"][key], key
    extra = set(server["environment"]) - set(base["services"]["server"]["environment"])
    assert extra == {"ADAPTFORMER_STORE_POLL_MS"}
