"""The ``adaptformer-client`` command line, run through ``main(argv)`` against the fake server."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from adaptformer_client.cli import main

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 20  # 28 bytes: best digit "8" from the fake


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "seven.png"
    path.write_bytes(PNG)
    return path


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADAPTFORMER_URL", raising=False)
    monkeypatch.delenv("ADAPTFORMER_API_KEY", raising=False)


def run(fake, argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv, transport=fake.transport())
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_prints_a_table_with_bars(fake, image, capsys) -> None:
    code, out, err = run(fake, ["predict", "--task", "digits", str(image), "--top-k", "3"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == str(image)
    assert lines[1].split()[:2] == ["8", "0.900"]
    assert lines[2].split()[:2] == ["9", "0.450"]
    assert lines[3].split()[:2] == ["0", "0.225"]
    assert len(lines[1].split()[2]) > len(lines[2].split()[2]) > len(lines[3].split()[2])  # bars shrink
    assert lines[4].startswith("digits (version ") and lines[4].endswith("in 12.5 ms")
    assert dict(fake.requests[-1].url.params) == {"task": "digits", "top_k": "3"}


def test_predict_json_is_the_server_answer(fake, image, capsys) -> None:
    code, out, _ = run(fake, ["predict", "--task", "digits", str(image), "--top-k", "2", "--json"], capsys)
    assert code == 0
    answer = json.loads(out)
    assert answer["task"] == "digits" and answer["modality"] == "image"
    assert answer["predictions"] == [[{"label": "8", "score": 0.9}, {"label": "9", "score": 0.45}]]


def test_predict_several_files_is_one_batch(fake, image, tmp_path, capsys) -> None:
    other = tmp_path / "three.png"
    other.write_bytes(PNG + b"yyyyy")
    code, out, _ = run(fake, ["predict", "--task", "digits", str(image), str(other), "--top-k", "1"], capsys)
    assert code == 0
    assert len(fake.requests) == 1 and [p[0] for p in fake.parts] == ["image", "image"]
    lines = out.splitlines()
    assert lines[0] == str(image) and lines[1].split()[0] == "8"
    assert lines[2] == str(other) and lines[3].split()[0] == "3"


def test_predict_reads_stdin(fake, monkeypatch, capsys) -> None:
    class Stdin:
        buffer = __import__("io").BytesIO(PNG)

    monkeypatch.setattr("sys.stdin", Stdin)
    code, out, _ = run(fake, ["predict", "--task", "digits", "-"], capsys)
    assert code == 0 and out.startswith("<stdin>\n")
    assert fake.parts[0][3] == PNG


def test_bars_fall_back_to_ascii(fake, image, capsys, monkeypatch) -> None:
    class AsciiOut(__import__("io").StringIO):
        encoding = "ascii"

    out = AsciiOut()
    monkeypatch.setattr("sys.stdout", out)
    assert main(["predict", "--task", "digits", str(image), "--top-k", "1"], transport=fake.transport()) == 0
    assert out.getvalue().splitlines()[1].split()[2] == "#" * 22  # round(0.9 * 24)


def test_clip_from_frames_and_from_a_gif(fake, image, tmp_path, capsys) -> None:
    code, out, _ = run(fake, ["clip", "--task", "motion", *[str(image)] * 4], capsys)
    assert code == 0 and out.startswith("clip of 4 frames\n")
    assert [p[0] for p in fake.parts] == ["frame"] * 4

    animation = tmp_path / "wave.gif"
    animation.write_bytes(b"GIF89a" + b"z" * 10)
    code, out, _ = run(fake, ["clip", "--task", "motion", str(animation), "--json"], capsys)
    assert code == 0 and json.loads(out)["modality"] == "clip"
    assert fake.parts == [("image", "wave.gif", "image/gif", animation.read_bytes())]


def test_adapters_table_detail_and_json(fake, capsys) -> None:
    code, out, _ = run(fake, ["adapters"], capsys)
    assert code == 0
    header, digits, motion = out.splitlines()
    assert header.split()[:3] == ["TASK", "VERSION", "METHOD"]
    assert digits.split()[0] == "digits" and "clip x4" in motion

    code, out, _ = run(fake, ["adapters", "motion"], capsys)
    assert code == 0 and "classes:   3: wave, jump, sit" in out and "modality:  clip (4 frames)" in out

    code, out, _ = run(fake, ["adapters", "--json"], capsys)
    assert [a["task"] for a in json.loads(out)] == ["digits", "motion"]


def test_upload_and_delete(fake, tmp_path, capsys) -> None:
    file = tmp_path / "cars.safetensors"
    file.write_bytes(b"weights")
    code, out, _ = run(fake, ["upload", str(file), "--task", "cars"], capsys)
    assert code == 0 and out.startswith("installed cars (version ")
    code, out, _ = run(fake, ["upload", str(file), "--task", "cars", "--json"], capsys)
    assert code == 0 and json.loads(out)["replaced"] is True

    code, out, _ = run(fake, ["delete", "cars"], capsys)
    assert code == 0 and out.startswith("deleted cars (version ")
    assert "cars" not in fake.adapters


def test_health_exit_status_follows_readiness(fake, capsys) -> None:
    code, out, _ = run(fake, ["health"], capsys)
    assert (code, out) == (0, "ok; ready: backbone embedded-vit, 2 adapters\n")
    fake.ready = False
    code, out, _ = run(fake, ["health"], capsys)
    assert (code, out) == (1, "ok; loading\n")
    code, out, _ = run(fake, ["health", "--json"], capsys)
    assert code == 1 and json.loads(out)["ready"]["status"] == "loading"


def test_server_errors_print_one_line_and_exit_1(fake, capsys) -> None:
    code, out, err = run(fake, ["adapters", "nope"], capsys)
    assert (code, out) == (1, "")
    assert err == "error: no task 'nope'; GET /adapters lists the tasks\n"


def test_local_errors_print_one_line_and_exit_1(fake, tmp_path, capsys) -> None:
    code, out, err = run(fake, ["predict", "--task", "digits", str(tmp_path / "missing.png")], capsys)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("error: ") and "missing.png" in err


def test_connection_refused_is_one_line(capsys) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    code = main(["health", "--retries", "0"], transport=httpx.MockTransport(refused))
    err = capsys.readouterr().err
    assert code == 1
    assert err == "error: cannot connect to http://127.0.0.1:8000: Connection refused; is the server up?\n"


def test_url_and_key_from_options_or_environment(fake, monkeypatch, capsys) -> None:
    fake.api_key = "k1"
    monkeypatch.setenv("ADAPTFORMER_URL", "http://env.test:9000")
    monkeypatch.setenv("ADAPTFORMER_API_KEY", "k1")
    assert run(fake, ["adapters"], capsys)[0] == 0
    assert str(fake.requests[-1].url).split("?")[0] == "http://env.test:9000/adapters"  # (the client pages: ?limit=)

    # Options win over the environment, and may come before or after the command.
    fake.api_key = "k2"
    assert run(fake, ["--url", "http://a.test", "adapters", "--api-key", "k2"], capsys)[0] == 0
    assert fake.requests[-1].url.host == "a.test"
    assert fake.requests[-1].headers["authorization"] == "Bearer k2"
    code, _, err = run(fake, ["--api-key", "k2", "adapters", "--api-key", "wrong"], capsys)
    assert code == 1 and err == "error: wrong API key\n"


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["predict", "seven.png"])  # no --task
    assert info.value.code == 2
    assert "--task" in capsys.readouterr().err


def test_console_script_is_declared() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("adaptformer-client") == "adaptformer_client.cli:main"
