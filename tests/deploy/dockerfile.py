"""Just enough of the Dockerfile and .dockerignore formats to check the images offline: the
instructions of each stage, and whether the build context sends a path (moby's patternmatcher
rules: ``*`` and ``?`` stay within one path segment, ``**`` spans any number, a pattern that
matches a folder excludes what is inside it, and the last matching line wins, ``!`` re-including).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, COPY, RUN, ...
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(path: Path) -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
    return found


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group()), text
    )


def stages(path: Path) -> dict[str, Stage]:
    """Stages by name (unnamed ones by index), global ``ARG`` defaults expanded in ``FROM``."""
    args: dict[str, str] = {}
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for instruction in instructions(path):
        if instruction.keyword == "ARG" and current is None:
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
        elif instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            base = _expand(words[0], args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            current = Stage(base, name)
            found[name or str(len(found))] = current
        elif current is not None:
            current.instructions.append(instruction)
    return found


def copy_sources(instruction: Instruction) -> list[str]:
    """The build-context sources of a COPY/ADD (none for ``--from=``), exec or shell form."""
    text = instruction.arguments
    words = [w for w in shlex.split(text) if w.startswith("--")]
    if any(w.startswith("--from=") for w in words):
        return []
    rest = [w for w in shlex.split(text) if not w.startswith("--")]
    if text.lstrip().startswith("["):
        rest = [w.strip('[]",') for w in rest]
    return rest[:-1]


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    regex = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            else:
                regex += ".*"
                i += 2
            continue
        regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        i += 1
    return re.compile(f"^{regex}$")


def dockerignore_patterns(path: Path) -> list[tuple[bool, str]]:
    """(is_exception, pattern) per line of a .dockerignore."""
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = re.sub(r"/+", "/", pattern).strip("/")
        patterns.append((exception, pattern.removeprefix("./")))
    return patterns


def excluded(relative: str, patterns: list[tuple[bool, str]]) -> bool:
    """Whether the build context leaves out ``relative`` (a path from the context root)."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for exception, pattern in patterns:
        if any(_pattern(pattern).match(candidate) for candidate in candidates):
            result = not exception
    return result
