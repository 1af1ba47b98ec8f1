"""The README is true: its command lines parse with today's CLI, and every repository file it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from subjectgen.cli import parse

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PLACEHOLDERS = {"MODEL": "builtin", "METHOD": "lora", "COMMAND": "demo", "DIR": "out"}


def command_lines() -> list[str]:
    """Every `subjectgen ...` line of the README's code blocks, comments cut, continuations joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("subjectgen "):
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", command_lines())
def test_readme_command_lines_parse(line):
    words = [PLACEHOLDERS.get(w, w) for w in shlex.split(line)[1:]]
    args = parse(words)  # argparse exits with 2 on anything the CLI does not accept
    assert args.command == words[0]


def test_the_readme_has_command_lines_for_every_command():
    commands = {shlex.split(line)[1] for line in command_lines()}
    assert {"train", "generate", "bench", "report", "score"} <= commands


def test_every_repository_file_the_readme_names_exists():
    named = set(re.findall(r"\]\(((?:docs|benchmarks|src|tests)/[^)\s#]+)\)", README))
    named |= set(re.findall(r"`((?:docs|benchmarks|src|tests)/[^`\s]+)`", README))
    named |= {"constraints.txt", "Makefile", ".ci/run"} & set(re.findall(r"`([^`\s]+)`", README))
    assert named, "the README names no repository files"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing
