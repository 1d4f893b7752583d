"""Check the relative links and anchors of Markdown files: every target must exist.

    venv/bin/python -m devtools.check_links README.md docs

A link `[text](target)` (or a reference definition `[name]: target`) outside code blocks and
code spans is checked unless its target has a scheme (`https:`, `mailto:`...): the path,
relative to the file that links, must exist (a file or a folder), and an `#anchor` must match a
heading's GitHub slug (or an `<a id=...>`) in the Markdown file it points at, or in the same
file for a bare `#anchor`. Prints one line per broken link, `file:line: target: why`, and exits
1 if there is any. Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
INLINE_LINK = re.compile(
    r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Link:
    """One link found in a Markdown file: where it is and what it points at."""

    path: Path
    line: int
    target: str


@dataclass(frozen=True)
class Problem:
    """A broken link and why it is broken."""

    link: Link
    reason: str

    def __str__(self) -> str:
        """Say it on one line: file:line: target: reason (the file relative to here if it is below)."""
        path = self.link.path
        if path.is_absolute() and path.is_relative_to(Path.cwd()):
            path = path.relative_to(Path.cwd())
        return f"{path}:{self.link.line}: {self.link.target}: {self.reason}"


def slug(heading: str) -> str:
    """Return GitHub's anchor for a heading's text: its rendered words, lower case, hyphens for spaces."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link reads as its text
    parts = re.split(r"(`+[^`]*`+)", text)  # code spans render as they are written
    for index in range(0, len(parts), 2):
        prose = re.sub(r"<[^>]+>", "", parts[index])  # inline HTML tags render as nothing
        parts[index] = re.sub(r"(?<!\w)_+|_+(?!\w)", "", prose.replace("*", ""))  # _emphasis_, not snake_case
    text = "".join(parts).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _prose_lines(text: str) -> Iterator[tuple[int, str, str]]:
    """Yield (line number, line, line with code spans blanked) for every line of a Markdown text.

    A fence and each line inside a fenced code block come as empty strings: nothing to check there.
    """
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        marker = FENCE.match(line)
        if fence is None and marker:
            fence = marker.group(1)
        elif fence is not None:
            closes = marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence)
            if closes and not line.strip().strip(fence[0]):
                fence = None
        else:
            yield number, line, CODE_SPAN.sub(lambda span: " " * len(span.group(0)), line)
            continue
        yield number, "", ""


def anchors(text: str) -> set[str]:
    """Return every anchor a Markdown text defines: its headings' slugs (repeats numbered) and HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    previous = ""

    def add(heading: str) -> None:
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")

    for _, line, prose in _prose_lines(text):
        atx = ATX_HEADING.match(line)
        if atx and prose.strip():
            add(atx.group(2) or "")
        elif (
            SETEXT_UNDERLINE.match(line)
            and previous.strip()
            and not previous.lstrip().startswith(("|", "-", "*", "+", ">"))
            and not ATX_HEADING.match(previous)
        ):
            add(previous.strip())
        found.update(HTML_ANCHOR.findall(prose))
        previous = line
    return found


def links(path: Path, text: str) -> Iterator[Link]:
    """Yield every link in a Markdown text outside code, with its line number."""
    for number, _, prose in _prose_lines(text):
        for match in INLINE_LINK.finditer(prose):
            yield Link(path, number, match.group(2))
        definition = REFERENCE_DEFINITION.match(prose)
        if definition:
            yield Link(path, number, definition.group(1))


def check_link(link: Link, anchors_of: dict[Path, set[str]]) -> str | None:
    """Return why a link is broken, or None if its target (and anchor) exist; external links pass."""
    target = link.target
    if not target or SCHEME.match(target) or target.startswith("//"):
        return None if target else "empty target"
    location, _, anchor = target.partition("#")
    location = unquote(location)
    if location.startswith("/"):
        return "absolute path: link relative to this file instead"
    resolved = (link.path.parent / location).resolve() if location else link.path.resolve()
    if not resolved.exists():
        return "no such file or folder"
    if not anchor or resolved.is_dir() or resolved.suffix.lower() != ".md":
        return None
    if resolved not in anchors_of:
        anchors_of[resolved] = anchors(resolved.read_text(encoding="utf-8"))
    if unquote(anchor).lower() not in anchors_of[resolved]:
        where = location or "this file"
        return f"no heading with anchor #{anchor} in {where}"
    return None


def markdown_files(paths: Iterable[Path]) -> list[Path]:
    """Return the Markdown files named, and those under the folders named, in a stable order."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.rglob("*.md")) if path.is_dir() else [path])
    return files


def check(paths: Iterable[Path]) -> list[Problem]:
    """Return the broken links of these Markdown files (and of those in these folders)."""
    problems: list[Problem] = []
    anchors_of: dict[Path, set[str]] = {}
    for path in markdown_files(paths):
        for link in links(path, path.read_text(encoding="utf-8")):
            reason = check_link(link, anchors_of)
            if reason:
                problems.append(Problem(link, reason))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Check the files and folders given; print each broken link; return 1 if there was one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="Markdown files, or folders of them")
    options = parser.parse_args(argv)
    missing = [str(path) for path in options.paths if not path.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    files = markdown_files(options.paths)
    problems = check(files)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} broken link(s) in {len(files)} Markdown file(s)", file=sys.stderr)
        return 1
    print(f"links: {len(files)} Markdown file(s), no broken link")
    return 0


if __name__ == "__main__":
    sys.exit(main())
