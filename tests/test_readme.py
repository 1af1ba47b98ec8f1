"""The README is true: every command and Python snippet it shows runs, in the order shown, as a reader would run
them from the repository's folder; every command line in docs/METHODS.md and docs/REFERENCE.md parses; every
repository file they name exists.

The commands and snippets are parsed from README.md's code blocks, so this test follows the README as it changes.
They run in one scratch folder (a later block uses what an earlier one wrote: `generate runs/dog` the run that
`train` made), on the built-in model and evaluators as written. What differs from a reader's run, and only this:

- the scratch folder holds a link `src` to the repository's src/, so the paths into the package (the bundled
  sample subject, the built-in model's folder) work as written;
- less work, so that the whole README runs in under a minute at one thread (the built-in model's defaults, 400
  training steps and 25 sampler steps per image, and the quick bench's two subjects would take several): each
  command gets the flags of FAST appended (argparse takes the last of a repeated flag; the bench keeps every
  method, on one subject, one prompt, one image), and a Python snippet's `model="builtin"` becomes
  `model="builtin", steps=2`. A command takes the same paths through the code at any step count;
- an inline command (in the text, not a code block) runs only if it prints help (`... --help`); the others are
  fragments of prose.

A line the test cannot run (`make demo` builds a virtual environment) is listed in ELSEWHERE with the test that
runs the same thing; any other line of a code block that is not a `subjectgen` command fails this test.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from subjectgen.cli import main, parse

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {name: (ROOT / "docs" / name).read_text() for name in ("METHODS.md", "REFERENCE.md")}

FAST = {  # appended to each command of that name
    "train": ["--steps", "2"],
    "generate": ["--steps", "2", "-n", "1"],
    "bench": ["--train-steps", "2", "--sample-steps", "2", "--subjects", "dog", "--prompts", "1",
              "--images-per-prompt", "1"],
}
FAST_PYTHON = {'model="builtin"': 'model="builtin", steps=2'}
ELSEWHERE = {  # a README line this test cannot run -> (the file that runs the same thing, the words it runs it by)
    # the Makefile's demo target is `subjectgen demo --out demo` after the set-up; run on the tiny model there, and
    # on the built-in one by CI after the suite
    "make demo": ("tests/test_bench.py", "def test_the_default_demo_is_the_subject_and_prompts_chosen_on_the_"
                  "validation_set("),
    "make test": (".ci/run", "make test"),  # the suite itself, this file included
}
PLACEHOLDERS = {"MODEL": "builtin", "METHOD": "lora", "COMMAND": "demo", "DIR": "out"}  # docs/ command lines


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)


def command_lines(body: str) -> list[str]:
    """The lines of a bash block, continuations joined, comments (two spaces and #) cut, blanks dropped."""
    lines = (line.split("  #")[0].strip() for line in body.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def readme_steps() -> list[tuple[str, str]]:
    """What the README shows, in order: ('command', line), ('python', snippet) or ('elsewhere', line)."""
    steps = []
    for language, body in blocks(README):
        if language == "python":
            steps.append(("python", body))
        elif language == "bash":
            steps += [("elsewhere" if line in ELSEWHERE else "command", line) for line in command_lines(body)]
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    steps += [("command", span) for span in re.findall(r"`(subjectgen [^`]*--help)`", prose)]
    return steps


def fast(words: list[str]) -> list[str]:
    return [*words, *FAST.get(words[0], [])]


def run_command(line: str) -> str:
    """One README command, in-process (the CLI's own main), with FAST's flags; its stdout."""
    words = shlex.split(line)
    assert words[0] == "subjectgen", f"the README shows a command this test does not know how to run: {line}"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(fast(words[1:]))
        except SystemExit as exc:  # --help exits 0 from argparse
            code = exc.code
    assert code == 0, f"README command failed ({code}): {line}\n{err.getvalue()[-2000:]}"
    return out.getvalue()


def run_python(snippet: str) -> None:
    code = snippet
    for written, faster in FAST_PYTHON.items():
        code = code.replace(written, faster)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "README.md (python block)", "exec"), {"__name__": "__readme__"})


def written_paths(kind: str, text: str) -> list[str]:
    """What a step says it writes: a command's --out, a snippet's .save("path") and out="path" arguments."""
    if kind == "command":
        words = shlex.split(text)
        return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--out"]
    return re.findall(r"""(?:\.save\(|\bout=)["']([^"']+)["']""", text)


def test_every_readme_command_and_snippet_runs_in_order(tmp_path, monkeypatch, cache_root):
    import torch

    threads = torch.get_num_threads()
    (tmp_path / "src").symlink_to(ROOT / "src")
    monkeypatch.chdir(tmp_path)
    steps = readme_steps()
    assert {kind for kind, _ in steps} == {"command", "python", "elsewhere"}
    try:
        for kind, text in steps:
            if kind == "elsewhere":
                continue
            stdout = run_command(text) if kind == "command" else run_python(text)
            if text.startswith("subjectgen score "):
                assert set(json.loads(stdout)) >= {"dino", "clip_i", "clip_t"}
            for path in written_paths(kind, text):
                assert Path(path).exists(), f"{text!r} did not write {path}"
    finally:
        torch.set_num_threads(threads)  # the CLI sets torch's threads for its process: this one's are the suite's


def test_what_the_readme_cannot_run_is_run_by_a_named_test():
    shown = {text for kind, text in readme_steps() if kind == "elsewhere"}
    assert shown == set(ELSEWHERE), "ELSEWHERE lists a line the README no longer shows"
    for path, words in ELSEWHERE.values():
        assert words in (ROOT / path).read_text(), f"{path} no longer has {words!r}"
    assert "subjectgen demo --out demo" in (ROOT / "Makefile").read_text()
    assert "subjectgen demo" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_shows_the_main_journeys_and_runnable_python():
    commands = {shlex.split(text)[1] for kind, text in readme_steps() if kind == "command"}
    assert {"train", "generate", "bench", "score"} <= commands
    for language, body in blocks(README):
        if language == "python":
            ast.parse(body)  # a snippet that does not parse fails here with its line, before the slow test


def docs_command_lines() -> list[str]:
    return [line for text in DOCS.values() for language, body in blocks(text) if language == "bash"
            for line in command_lines(body) if line.startswith("subjectgen ")]


@pytest.mark.parametrize("line", docs_command_lines())
def test_docs_command_lines_parse(line):
    words = [PLACEHOLDERS.get(w, w) for w in shlex.split(line.replace("...", ""))[1:]]
    args = parse(words)  # argparse exits with 2 on anything the CLI does not accept
    assert args.command == words[0]


@pytest.mark.parametrize("name, text", [("README.md", README), *(("docs/" + n, t) for n, t in DOCS.items())])
def test_every_repository_file_named_exists(name, text):
    base = (ROOT / name).parent
    linked = {(base / p).resolve() for p in re.findall(r"\]\(([^)\s#:]+)\)", text)}
    quoted = {ROOT / p for p in re.findall(r"`((?:docs|benchmarks|src|tests)/[^`\s]+)`", text)}
    quoted |= {ROOT / p for p in {"constraints.txt", "Makefile", ".ci/run"} & set(re.findall(r"`([^`\s]+)`", text))}
    named = linked | quoted
    assert named, f"{name} names no repository files"
    missing = sorted(str(p.relative_to(ROOT)) for p in named if not p.exists())
    assert not missing, missing


def test_the_readme_family_table_is_what_the_code_runs():
    """Each row's pipeline class names a registered family; each 'yes' is a method the registry runs on it."""
    from subjectgen.backbones import FAMILIES
    from subjectgen.methods import registry

    lines = [line for line in README.splitlines() if line.startswith("| ") and "`" in line]
    header = next(line for line in lines if line.startswith("| model family"))
    methods = re.findall(r"`([a-z-]+)`", header)
    rows = [line for line in lines if "Pipeline`" in line]
    assert len(rows) == len(FAMILIES)  # every family has its row
    for row in rows:
        pipeline = re.search(r"`(\w+Pipeline)`", row).group(1)
        family = next(name for name, b in FAMILIES.items() if pipeline in b.pipeline_classes)
        cells = [cell.strip() for cell in row.strip("|").split("|")[1:]]
        assert dict(zip(methods, cells)) == {m: "yes" if registry.get(m).runs_on(family) else "no" for m in methods}
