"""Every shell and Python block of README.md, client/README.md and docs/*.md runs as written, or says why not.

Each block runs for real, against two ``adaptformer serve`` processes this test starts on free loopback ports
(temporary stores, the embedded backbone and the seeded demo adapters, plus the docs' example task ``cars``,
installed again before each block): the keyless one, as ``make serve`` starts it, and, for blocks marked
``<!-- docs-test: keys -->``, one with a predict key and an admin key. The only change made to a block is its port: ``localhost:8000`` and ``127.0.0.1:8000`` become
the test server's. Blocks run in a temporary working directory holding ``examples/`` (the repository's) and every
file the docs name (``shirt.png``, ``a.png``, ``f0.png``, ``cars.safetensors``...: see ``conftest._files``), with
the virtualenv first on PATH, ``$ADAPTFORMER_URL`` naming the test server (the client's default is port 8000) and
``$ADMIN_KEY``/``$PREDICT_KEY`` holding the keyed server's keys.

- A shell block runs command by command (``bash -c``, ``\\`` continuations joined); each must exit 0 and must not
  answer an error (``{"error": ...}``), and a ``/predict`` of files from ``examples/`` must answer each file's true
  label (``examples/manifest.json``) first.
- A transcript (``$ command`` lines, each followed by what it printed) must print the error its transcript shows:
  the same code and ``check``, and the same message (``...`` stands for any text, ``sha256:`` digests may differ).
- A Python block runs as a script with the virtualenv's Python.
- A block marked ``<!-- docs-test: skip (REASON) -->`` does not run; the run's summary lists it with its reason.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.doc_blocks import ROOT, Block, MarkerError, all_blocks, parse

BLOCKS = [b for b in all_blocks() if b.kind != "output"]
RUN = [b for b in BLOCKS if not b.skip]
TRUTH = {
    f"examples/{e['file']}": (e["task"], e["label"]) for e in json.loads((ROOT / "examples/manifest.json").read_text())
}
PORT = re.compile(r"\b(localhost|127\.0\.0\.1):8000\b")
COMMAND_TIMEOUT = 180


def _with_port(text: str, port: int) -> str:
    out = PORT.sub(rf"\g<1>:{port}", text)
    assert ":8000" not in out, f"a block that runs names port 8000 other than as localhost:8000: {text}"
    return out


def _json_values(text: str) -> list[object]:
    """The JSON documents in a command's output, in order (non-JSON text is passed over)."""
    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        j = text.find("{", i)
        if j < 0:
            break
        try:
            value, i = dec.raw_decode(text, j)
            out.append(value)
        except json.JSONDecodeError:
            i = j + 1
    return out


def _expected_labels(command: str) -> tuple[str, list[str]] | None:
    """(task, true labels) when the command classifies files of examples/ with one task, else None."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    files = [w.split("@", 1)[1] for w in words if w.startswith(("image=@", "@examples/"))]
    files = [f for f in files if f in TRUTH]
    if words and words[0] == "curl":
        tasks = re.findall(r"[?&]task=([^&'\s]+)", command)
    elif words[:2] == ["adaptformer-client", "predict"] or words[:2] == ["adaptformer-client", "clip"]:
        tasks = [words[i + 1] for i, w in enumerate(words) if w == "--task"]
        files = [w for w in words if w in TRUTH]
    else:
        return None
    if not files or len(tasks) != 1 or "|" in words:
        return None
    assert all(TRUTH[f][0] == tasks[0] for f in files), f"{command}: a file of another task's examples"
    return tasks[0], [TRUTH[f][1] for f in files]


def _run(command: str, world, server) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=world.workdir,
        env=world.env(server),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def _message_pattern(expected: str) -> re.Pattern:
    parts = re.split(r"(\.\.\.|sha256:[0-9a-f]+)", expected)
    regex = "".join(
        ".*" if p == "..." else r"sha256:[0-9a-f]+" if p.startswith("sha256:") else re.escape(p) for p in parts
    )
    return re.compile(regex, re.S)


def _check_transcript_output(command: str, expected: list[str], stdout: str) -> None:
    want = _json_values("\n".join(expected))
    got = _json_values(stdout)
    assert len(got) == len(want), f"{command}\nprinted: {stdout!r}\nthe docs show: {expected}"
    for w, g in zip(want, got, strict=True):
        if not (isinstance(w, dict) and isinstance(w.get("error"), dict)):
            continue
        assert isinstance(g, dict) and isinstance(g.get("error"), dict), f"{command}\nprinted: {stdout}"
        we, ge = w["error"], g["error"]
        assert (ge.get("code"), ge.get("check")) == (we.get("code"), we.get("check")), f"{command}\nprinted: {stdout}"
        assert _message_pattern(we["message"]).fullmatch(ge["message"]), (
            f"{command}\nthe docs show: {we['message']}\nthe server says: {ge['message']}"
        )


def _check_answer(command: str, stdout: str) -> None:
    values = _json_values(stdout)
    for v in values:
        assert not (isinstance(v, dict) and "error" in v), f"{command}\nanswered an error: {stdout}"
    labels = _expected_labels(command)
    if labels is None:
        return
    _, truth = labels
    if command.startswith("curl"):
        assert len(values) == 1, f"{command}\nprinted: {stdout}"
        got = [p[0]["label"] for p in values[0]["predictions"]]  # type: ignore[index]
        assert got == truth, f"{command}\nanswered {got}, the true labels are {truth}"
    else:
        for label in truth:
            assert label in stdout, f"{command}\nprinted {stdout!r}; the true label is {label!r}"


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs_as_written(block: Block, doc_world) -> None:
    server = doc_world.keyed if block.keys else doc_world.open
    doc_world.install_cars(server)
    if block.kind == "python":
        script = doc_world.workdir / f"block_{Path(block.path).stem}_{block.line}.py"
        script.write_text(_with_port(block.text, server.port) + "\n")
        r = subprocess.run(
            [sys.executable, script.name],
            cwd=doc_world.workdir,
            env=doc_world.env(server),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        assert r.returncode == 0, f"{block.id} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
        return
    assert block.commands, f"{block.id}: a shell block without commands"
    for command in block.commands:
        r = _run(_with_port(command.text, server.port), doc_world, server)
        assert r.returncode == 0, f"{block.id}: `{command.text}` exited {r.returncode}\n{r.stdout}\n{r.stderr}"
        if block.transcript:
            _check_transcript_output(command.text, command.expected, r.stdout)
        else:
            _check_answer(command.text, r.stdout)


def test_every_code_block_is_run_or_skipped_with_a_reason() -> None:
    assert RUN, "no block runs"
    for b in BLOCKS:
        assert b.skip is None or b.skip.strip(), b.id
    for b in all_blocks():
        assert b.lang or b.kind == "shell", f"{b.id}: a bare fence that holds no command: fence it as ```text"


def test_readme_predict_examples_run() -> None:
    """The README's curl lines on examples/ are among the blocks that run (the label check is in the run)."""
    readme = [c.text for b in RUN if b.path == "README.md" for c in b.commands]
    predicts = [c for c in readme if c.startswith("curl") and _expected_labels(c)]
    assert {_expected_labels(c)[0] for c in predicts} >= {"fashion", "digits", "motion"}, readme  # type: ignore[index]


def test_markers_need_a_reason() -> None:
    ok = "<!-- docs-test: skip (needs a GPU) -->\n```sh\nnvidia-smi\n```\n"
    assert parse("x.md", ok)[0].skip == "needs a GPU"
    with pytest.raises(MarkerError, match="needs a reason"):
        parse("x.md", "<!-- docs-test: skip () -->\n```sh\nnvidia-smi\n```\n")
    with pytest.raises(MarkerError, match="needs a reason"):
        parse("x.md", "<!-- docs-test: skip -->\n```sh\nnvidia-smi\n```\n")
    with pytest.raises(MarkerError, match="unknown"):
        parse("x.md", "<!-- docs-test: skipp (x) -->\n```sh\nnvidia-smi\n```\n")
    with pytest.raises(MarkerError, match="right before a fence"):
        parse("x.md", "<!-- docs-test: skip (x) -->\n\n```sh\nnvidia-smi\n```\n")
