"""Read a benchmark folder in DreamBench's layout: its subjects, classes and the 25 + 25 prompts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

PROMPT_LINE = re.compile(r"^'(.*)'\.format\(unique_token, class_token\),?$")


@dataclass
class Benchmark:
    root: Path
    classes: dict[str, str]        # subject name -> class noun
    object_prompts: list[str]      # with {0} = identifier, {1} = class, as in the file
    live_prompts: list[str]

    def is_live(self, subject: str) -> bool:
        """DreamBench's live subjects are its animals (cat, dog classes)."""
        return self.classes[subject] in ("cat", "dog")

    def prompts_for(self, subject: str) -> list[str]:
        """The subject's 25 prompts as templates with {subject}, e.g. 'a {subject} on the beach'."""
        chosen = self.live_prompts if self.is_live(subject) else self.object_prompts
        return [p.replace("{0} {1}", "{subject}") for p in chosen]


# DreamBooth's three kinds of prompt (Ruiz et al., 2023): the subject in a new scene, wearing something (DreamBench's
# live subjects only), or itself changed (colour, material, shape).
PROMPT_TYPES = ("recontextualization", "accessorization", "property")


def prompt_type(template: str) -> str:
    """The kind of a prompt template with {subject}: property when a word before the subject changes it ('a red
    {subject}', 'a cube shaped {subject}'), accessorization when the subject wears something ('... wearing a santa
    hat', '... in a chef outfit'), else recontextualization (a scene: '... on the beach')."""
    before, _, after = template.partition("{subject}")
    if before.strip().lower() not in ("", "a", "an", "the"):
        return "property"
    after = after.strip().lower()
    if after.startswith("wearing ") or after.endswith(" outfit"):
        return "accessorization"
    return "recontextualization"


def read_benchmark(root: Path) -> Benchmark:
    root = Path(root)
    path = root / "prompts_and_classes.txt"
    if not path.is_file():
        raise UserError(f"{root} has no prompts_and_classes.txt; give a folder in DreamBench's layout")
    classes, object_prompts, live_prompts, section = {}, [], [], None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line in ("Classes", "Object Prompts", "Live Subject Prompts"):
            section = line
        elif section == "Classes" and "," in line and line != "subject_name,class":
            name, noun = line.split(",", 1)
            classes[name.strip()] = noun.strip()
        elif (match := PROMPT_LINE.match(line)) and section in ("Object Prompts", "Live Subject Prompts"):
            (object_prompts if section == "Object Prompts" else live_prompts).append(match.group(1))
    if not classes or not object_prompts or not live_prompts:
        raise UserError(f"{path} is not in DreamBench's format (classes, object and live prompt lists)")
    return Benchmark(root, classes, object_prompts, live_prompts)


def resolve_bench(name: str) -> Path:
    """The folder of `--bench`: 'emoji' (the built-in EmojiBench) or a folder in DreamBench's layout."""
    if name == "emoji":
        from ..assets import EMOJIBENCH

        return EMOJIBENCH
    if not Path(name).is_dir():
        raise UserError(f"--bench {name} is not a folder; give a folder in DreamBench's layout or 'emoji'")
    return Path(name)
