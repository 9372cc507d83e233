"""The project's documentation holds together: every page of docs/ that a source file cites exists
(and so does the section it names), every relative link of a Markdown file resolves inside the
repository (its #anchor too), each registered provider has its protocol page, and no file names a
path on somebody's machine."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from query_relay.providers import PROVIDERS

ROOT = Path(__file__).resolve().parents[2]
SOURCE_SUFFIXES = frozenset({".py", ".yaml", ".yml", ".json", ".md", ".toml"})
SOURCE_NAMES = frozenset({"Makefile"})
NOT_SOURCES = frozenset({".git", ".venv", "node_modules", ".aws-sam", ".mypy_cache", ".ruff_cache"})

# A citation of a page of docs/, as code and README write it; not a URL's path (".../docs/x.md").
DOC_CITATION = re.compile(r"(?<![\w./-])(docs/[\w./-]*?\.md)\b")
# ... optionally naming a section: (docs/contracts.md, "HTTP API")
DOC_SECTION = re.compile(r'(?<![\w./-])(docs/[\w./-]*?\.md),\s+"([^"\n]+)"')
# An absolute path of a machine (a home, root's home, a build host's work tree); not a URL's path.
MACHINE_PATH = re.compile(r"(?<![\w.~%-])/(?:work|root|home)/")
MARKDOWN_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def _is_source(relative: Path) -> bool:
    if NOT_SOURCES.intersection(relative.parts):
        return False
    return relative.suffix in SOURCE_SUFFIXES or relative.name in SOURCE_NAMES


def _walk_sources() -> Iterator[Path]:
    """Without git (an exported tree): every file, skipping what is never a source."""
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [name for name in subdirectories if name not in NOT_SOURCES]
        for name in files:
            yield (Path(directory) / name).relative_to(ROOT)


@cache
def source_files() -> tuple[Path, ...]:
    """The repository's source files, relative to its root: what git tracks plus new files not yet
    added (git's ignore rules leave out .venv, node_modules and build output)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        candidates: list[Path] = [Path(name) for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        candidates = list(_walk_sources())
    return tuple(sorted(path for path in candidates if _is_source(path) and (ROOT / path).is_file()))


@cache
def text_of(relative: Path) -> str:
    return (ROOT / relative).read_text(encoding="utf-8", errors="replace")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _without_code_blocks(markdown: str) -> str:
    """Fenced blocks blanked out (their lines kept, so line numbers stay right)."""
    return FENCED_BLOCK.sub(lambda block: "\n" * block.group(0).count("\n"), markdown)


@cache
def headings_of(relative: Path) -> tuple[str, ...]:
    return tuple(match.group(1) for match in HEADING.finditer(_without_code_blocks(text_of(relative))))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors_of(relative: Path) -> frozenset[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in headings_of(relative):
        anchor = github_anchor(heading)
        repeats = seen.get(anchor, 0)
        seen[anchor] = repeats + 1
        anchors.add(anchor if repeats == 0 else f"{anchor}-{repeats}")
    return frozenset(anchors)


def test_the_repository_has_its_docs() -> None:
    listed = set(source_files())
    for page in ("docs/architecture.md", "docs/contracts.md"):
        assert Path(page) in listed, f"{page} is missing"


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_every_registered_provider_has_its_protocol_page(provider: str) -> None:
    page = Path("docs") / "upstreams" / f"{provider}.md"
    assert (ROOT / page).is_file(), f"provider {provider!r} is registered but {page} does not exist"


def test_every_docs_page_cited_in_a_source_file_exists() -> None:
    missing = [
        f"{path}:{_line_of(text_of(path), match.start())}: {match.group(1)}"
        for path in source_files()
        for match in DOC_CITATION.finditer(text_of(path))
        if not (ROOT / match.group(1)).is_file()
    ]
    assert not missing, "cited pages that are not in the repository:\n" + "\n".join(missing)


def test_every_section_a_citation_names_exists() -> None:
    missing = [
        f'{path}:{_line_of(text_of(path), match.start())}: {match.group(1)}, "{match.group(2)}"'
        for path in source_files()
        for match in DOC_SECTION.finditer(text_of(path))
        if (ROOT / match.group(1)).is_file() and match.group(2) not in headings_of(Path(match.group(1)))
    ]
    assert not missing, "cited sections that the page does not have:\n" + "\n".join(missing)


def test_every_relative_link_in_markdown_resolves_inside_the_repository() -> None:
    broken: list[str] = []
    for path in source_files():
        if path.suffix != ".md":
            continue
        markdown = _without_code_blocks(text_of(path))
        for match in MARKDOWN_LINK.finditer(markdown):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # https:, mailto: ...
            where = f"{path}:{_line_of(markdown, match.start())}: {target}"
            file_part, _, anchor = target.partition("#")
            linked = (ROOT / path.parent / file_part).resolve() if file_part else ROOT / path
            if not linked.is_relative_to(ROOT) or not linked.exists():
                broken.append(f"{where} (no such file in the repository)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked.relative_to(ROOT)):
                broken.append(f"{where} (no such heading)")
    assert not broken, "links that do not resolve:\n" + "\n".join(broken)


def test_no_source_file_names_a_path_of_a_machine() -> None:
    found = [
        f"{path}:{_line_of(text_of(path), match.start())}"
        for path in source_files()
        for match in MACHINE_PATH.finditer(text_of(path))
    ]
    assert not found, "absolute paths of a machine (cite the repository's own files instead):\n" + "\n".join(
        found
    )


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("ES|QL queries", "esql-queries"),
        (
            "Developing against AWS: `sam sync --watch` (dev only)",
            "developing-against-aws-sam-sync---watch-dev-only",
        ),
        ("Every way a job can stop, and what is undone", "every-way-a-job-can-stop-and-what-is-undone"),
        ("Where a connection may point (SSRF)", "where-a-connection-may-point-ssrf"),
    ],
)
def test_anchors_are_spelled_as_github_spells_them(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor
