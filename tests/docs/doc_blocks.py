"""The fenced code blocks of the README and the docs, and what the docs test does with each.

A block is code when its fence says ``sh``, ``bash``, ``shell``, ``console`` or ``python``, or when a bare fence
holds commands. Output is fenced ``json``, ``text`` or ``yaml`` and never runs; so is a bare block that holds no
command (a diagram, a file tree: those should be fenced ``text``, and a test says so).

Markers, an HTML comment on the line right before a block (invisible on GitHub, plain in the source):

- ``<!-- docs-test: skip (REASON) -->``: the block does not run here, for REASON (needs Docker, a GPU, a download,
  starts a server of its own, trains for minutes...). The reason is required; the test lists every skipped block
  with it.
- ``<!-- docs-test: keys -->``: the block runs against the test's server with a predict key and an admin key
  (``$PREDICT_KEY``, ``$ADMIN_KEY``) instead of the keyless one.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = ["README.md", "client/README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]

SHELL = {"sh", "bash", "shell", "console"}
CODE = SHELL | {"python"}
OUTPUT = {"json", "text", "yaml"}
# First words that make a bare block a shell block.
COMMANDS = {
    "adaptformer",
    "adaptformer-client",
    "apt-get",
    "cp",
    "curl",
    "docker",
    "docker-compose",
    "make",
    "pip",
    "python",
    "python3",
    "ray",
    "scripts/docker-smoke.sh",
}

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:(.*?)-->\s*$")
SKIP = re.compile(r"^\s*skip\s*\((.*)\)\s*$")


class MarkerError(ValueError):
    """A ``docs-test`` marker that the test cannot read (e.g. a skip without a reason)."""


@dataclass
class Block:
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str  # the fence's info string ("" for a bare fence)
    text: str
    skip: str | None = None  # the marker's reason
    keys: bool = False
    commands: list[Command] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def kind(self) -> str:
        """'python', 'shell', or 'output' (never run)."""
        if self.lang == "python":
            return "python"
        if self.lang in SHELL:
            return "shell"
        if self.lang == "" and _holds_commands(self.text):
            return "shell"
        return "output"

    @property
    def transcript(self) -> bool:
        """A shell block written as a session: ``$ command`` lines, each followed by what it printed."""
        return any(line.startswith("$ ") for line in self.text.splitlines())


@dataclass
class Command:
    text: str  # one command as written (continuation lines joined)
    expected: list[str] = field(default_factory=list)  # a transcript's output lines after it


def _holds_commands(text: str) -> bool:
    for line in text.splitlines():
        words = line.split()
        if words and words[0] not in ("#", "$") and words[0].lstrip("$") in COMMANDS:
            return True
    return False


def _complete(command: str) -> bool:
    """False while a quoted string is still open (a command whose quoted argument spans lines)."""
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def _marker(line: str, where: str) -> tuple[str | None, bool]:
    body = MARKER.match(line).group(1).strip()  # type: ignore[union-attr]
    if body == "keys":
        return None, True
    if not re.match(r"skip\b", body):
        raise MarkerError(f"{where}: unknown docs-test marker {body!r} (use 'skip (REASON)' or 'keys')")
    m = SKIP.match(body)
    reason = m.group(1).strip() if m else ""
    if not reason:
        raise MarkerError(f"{where}: a docs-test skip marker needs a reason: <!-- docs-test: skip (REASON) -->")
    return reason, False


def split_commands(block: Block) -> list[Command]:
    """The commands of a shell block: logical lines (``\\`` continuations joined), comment-only lines left out.
    In a transcript, the ``$ `` lines, each with the output lines that follow it."""
    out: list[Command] = []
    pending = ""
    for raw in block.text.splitlines():
        if block.transcript and not raw.startswith("$ ") and not pending:
            if out and raw.strip():
                out[-1].expected.append(raw)
            continue
        line = raw[2:] if block.transcript and raw.startswith("$ ") else raw
        if pending:
            line = pending + "\n" + line
        if line.rstrip().endswith("\\") or not _complete(line):
            pending = line
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(Command(line))
    if pending:
        out.append(Command(pending))
    return out


def parse(path: str, text: str) -> list[Block]:
    """Every fenced block of one Markdown file, with its marker."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if MARKER.match(lines[i]):
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                if not FENCE.match(nxt):
                    raise MarkerError(f"{path}:{i + 1}: a docs-test marker must be on the line right before a fence")
            i += 1
            continue
        indent, fence, lang = m.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        skip, keys = None, False
        if start > 0 and MARKER.match(lines[start - 1]):
            skip, keys = _marker(lines[start - 1], f"{path}:{start}")
        block = Block(path, start + 1, lang.lower(), "\n".join(body), skip, keys)
        if block.kind == "shell":
            block.commands = split_commands(block)
        blocks.append(block)
    return blocks


def all_blocks() -> list[Block]:
    out: list[Block] = []
    for path in DOC_FILES:
        out += parse(path, (ROOT / path).read_text())
    return out
