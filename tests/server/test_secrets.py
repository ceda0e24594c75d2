"""Keys: off loopback the server refuses a key shorter than 16 characters or copied from an example, and no
document or example holds a key that such a server would accept."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from adaptformer_server import cli
from adaptformer_server.app import create_app
from adaptformer_server.settings import MAKE_KEY, PLACEHOLDER_KEYS, InsecureKeyError, Settings

ROOT = Path(__file__).resolve().parents[2]
GOOD = "q3VZb8t1-hH0kP2xLw9sYcFd"  # 24 random characters, as MAKE_KEY prints
WEAK = {
    "short admin key": {"admin_key": "root-admin-1"},
    "short predict key among good ones": {"admin_key": GOOD, "api_keys": f"{GOOD}x,k1"},
    "the old .env.example key": {"admin_key": "change-me-admin-key"},
    "a placeholder in another spelling": {"admin_key": "<Change_Me Admin Key>"},
    "one repeated character": {"api_keys": "x" * 32},
}


@pytest.mark.parametrize("case", list(WEAK))
def test_off_loopback_a_weak_key_is_refused_with_how_to_make_one(case: str):
    settings = Settings(host="0.0.0.0", **WEAK[case])
    with pytest.raises(InsecureKeyError) as e:
        settings.check_keys()
    message = str(e.value)
    assert MAKE_KEY in message and "0.0.0.0" in message
    for secret in [settings.admin_key, *settings.api_keys]:  # the message never shows a key
        assert secret is None or secret.get_secret_value() not in message
    with pytest.raises(InsecureKeyError):
        create_app(settings)  # an embedding app cannot skip the check


def test_off_loopback_good_keys_serve():
    settings = Settings(host="0.0.0.0", admin_key=GOOD, api_keys=f"{GOOD}-1,{GOOD}-2")
    assert settings.check_keys() == []
    create_app(settings)


def test_on_loopback_a_weak_key_is_allowed_with_a_warning(caplog: pytest.LogCaptureFixture):
    settings = Settings(admin_key="change-me-admin-key", api_keys="k1")
    assert settings.loopback
    with caplog.at_level(logging.WARNING, logger="adaptformer_server"):
        create_app(settings)
    warned = [r.getMessage() for r in caplog.records if r.name == "adaptformer_server"]
    assert any("ADAPTFORMER_ADMIN_KEY is a placeholder" in m and MAKE_KEY in m for m in warned), warned
    assert any("ADAPTFORMER_API_KEYS key 1 of 1 has 2 characters" in m for m in warned), warned
    assert not any("change-me-admin-key" in m for m in warned)


def test_serve_off_loopback_with_a_weak_key_exits_before_loading(monkeypatch, capsys):
    monkeypatch.setenv("ADAPTFORMER_ADMIN_KEY", "change-me-admin-key")
    loaded = []
    monkeypatch.setattr("adaptformer_server.app.create_app", lambda *a, **k: loaded.append(1))
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--host", "0.0.0.0", "--port", "0"])
    assert isinstance(e.value.code, str) and e.value.code.startswith("adaptformer serve: error: refusing to serve")
    assert "secrets.token_urlsafe(24)" in e.value.code and "change-me-admin-key" not in e.value.code
    assert loaded == []


def test_every_placeholder_is_documented_and_refused_off_loopback():
    api = (ROOT / "docs" / "API.md").read_text()
    section = api[api.index("### Key rules") :]
    section = section[section.index("The placeholders") : section.index("\n#")]
    listed = re.findall(r"`([^`]+)`", section)
    normalized = {re.sub(r"[\s\-_.<>'\"]", "", k.lower()): k for k in listed}
    assert normalized.keys() >= PLACEHOLDER_KEYS, PLACEHOLDER_KEYS - normalized.keys()
    for key in PLACEHOLDER_KEYS:
        long = normalized[key] if len(normalized[key]) >= 16 else f"<{normalized[key]}{' ' * 16}>"
        assert Settings(host="0.0.0.0", admin_key=long).key_problems() == [
            "ADAPTFORMER_ADMIN_KEY is a placeholder from an example"
        ], key


_ASSIGNED = re.compile(
    r"""(?:ADAPTFORMER_ADMIN_KEY|ADAPTFORMER_API_KEYS|--admin-key|--api-keys)["']?[ \t]*[=: \t][ \t]*"""
    r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"'#)]+))"""
)


def _example_keys() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", ROOT / ".env.example", ROOT / "Dockerfile", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted(ROOT.glob("docker-compose*.yml")) + sorted((ROOT / "scripts").glob("*"))
    texts = [(str(f.relative_to(ROOT)), f.read_text()) for f in files if f.is_file()]
    help_text = cli.build_parser().format_help()
    texts.append(("adaptformer serve --help", help_text))
    found = []
    for name, text in texts:
        for m in _ASSIGNED.finditer(text):
            value = m.group("dq") or m.group("sq") or m.group("bare") or ""
            if value and not value.startswith(("$", "KEYS", "ADMIN_KEY")):  # a variable, a metavar
                found.append((name, value))
    return found


def test_no_document_or_example_holds_a_key_a_network_server_accepts():
    found = _example_keys()
    assert any(value == "<16+ random characters>" for _, value in found)  # the scan sees SCALING.md's example
    accepted = [(name, value) for name, value in found if not Settings(host="0.0.0.0", admin_key=value).key_problems()]
    assert accepted == []
