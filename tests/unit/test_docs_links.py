"""Every reference to a document in the repository's markdown files resolves inside the
repository: each relative link (and its ``#anchor``, for a link to a markdown file or within
one), and each path the text names under the checkout's own folders (``docs/…``, ``bench/…``,
``example/…``, ``js/…``, ``tests/…``, ``scripts/…``, ``devservers/…``, ``pgbinding/…``),
in prose, code spans and code blocks alike.

Not references to check: URLs with a scheme (``https:``, ``mailto:``), names in Django
template tags (``{% static 'pgbinding/pgbinding.js' %}`` names a static file, not a path), and
paths the repository's ``.gitignore`` ignores (``bench/out/…``: what a run writes, never
committed). A path resolves from the repository root or from the markdown file's folder; one
with a ``*`` must match at least one file; one ending in ``/`` must be a folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Top-level folders of the checkout whose paths the markdown names.
FOLDERS = ("docs", "bench", "example", "js", "tests", "scripts", "devservers")
#: Folders never searched for markdown files (besides hidden ones and ``*.egg-info``).
SKIP_DIRS = {"node_modules", "build", "dist", "__pycache__"}

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text], one level of [brackets] inside
    r"\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"  # (target "title")
)
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.I)
TEMPLATE_TAG = re.compile(r"\{%.*?%\}|\{\{.*?\}\}", re.S)
URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")


def path_pattern(folders: tuple[str, ...]) -> re.Pattern[str]:
    """A path under one of ``folders``, not preceded by what would make it part of a longer
    path or name (``.venv-bench/…``, ``static/pgbinding/…``, ``../docs/…`` is a link)."""
    names = "|".join(map(re.escape, folders))
    return re.compile(rf"(?<![\w./~$@-])((?:\.\./)*(?:{names})/[\w./*-]*)")


FOLDER_PATH = path_pattern(FOLDERS)
PACKAGE_PATH = path_pattern(("pgbinding",))


def markdown_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
        ]
        found += [Path(folder) / f for f in files if f.endswith(".md")]
    return sorted(found)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def ignore_patterns() -> tuple[str, ...]:
    gitignore = ROOT / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.exists() else []
    return tuple(line.strip() for line in lines if line.strip() and line[0] not in "#!")


def ignored(path: str) -> bool:
    """Whether ``.gitignore`` ignores ``path`` (relative to the root) or a folder holding it."""
    parts = PurePosixPath(path).parts
    for pattern in ignore_patterns():
        name = pattern.strip("/")
        if "/" in name:  # anchored at the root
            candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        else:
            candidates = list(parts)
        if any(fnmatchcase(candidate, name) for candidate in candidates):
            return True
    return False


def resolves(path: str, base: Path) -> bool:
    """Whether ``path`` names something in the repository, from the root or from ``base``."""
    for start in (ROOT, base):
        target = start / path
        try:
            target.resolve().relative_to(ROOT)
        except ValueError:  # outside the repository
            continue
        if "*" in path:
            if any(start.glob(path.rstrip("/"))):
                return True
        elif path.endswith("/") and target.is_dir():
            return True
        elif not path.endswith("/") and target.exists():
            return True
    return False


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set(HTML_ANCHOR.findall(text))
    for _, heading in HEADING.findall(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(text: str) -> Iterator[str]:
    """The targets of the markdown links and reference definitions outside code."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    yield from INLINE_LINK.findall(prose)
    yield from REFERENCE_LINK.findall(prose)


def paths(text: str, pattern: re.Pattern[str]) -> Iterator[str]:
    """The paths ``pattern`` finds in the text, code included, template tags and URLs aside."""
    text = URL.sub("", TEMPLATE_TAG.sub("", text))
    for found in pattern.findall(text):
        yield found.rstrip(".,;:")


def broken_links(md: Path) -> list[str]:
    broken = []
    for target in links(md.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        if path and not resolves(path, md.parent):
            broken.append(f"{target}: no such file in the repository")
            continue
        linked = (md.parent / path).resolve() if path else md
        if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {rel(linked)}")
    return broken


def broken_paths(md: Path, pattern: re.Pattern[str]) -> list[str]:
    broken = []
    for path in sorted(set(paths(md.read_text(encoding="utf-8"), pattern))):
        if path.startswith("../"):
            continue  # relative to the file: a link, checked by test_links_resolve
        if ignored(path):
            continue
        if not resolves(path, md.parent):
            broken.append(path)
    return broken


MARKDOWN = markdown_files()
IDS = [rel(md) for md in MARKDOWN]


def test_the_repository_has_markdown_files() -> None:
    assert {"README.md", "docs/design-notes.md", "js/README.md"} <= set(IDS), IDS


@pytest.mark.parametrize("md", MARKDOWN, ids=IDS)
def test_links_resolve(md: Path) -> None:
    assert broken_links(md) == []


@pytest.mark.parametrize("md", MARKDOWN, ids=IDS)
def test_paths_resolve(md: Path) -> None:
    assert broken_paths(md, FOLDER_PATH) == []


#: README.md's module table ("How it works") still names the modules as they were before the
#: capture/, delivery/ and websocket/ subpackages; strict, so the fix turns this into a failure
#: that says to drop the mark.
@pytest.mark.parametrize("md", MARKDOWN, ids=IDS)
def test_package_paths_resolve(md: Path) -> None:
    assert broken_paths(md, PACKAGE_PATH) == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("see docs/benchmarks.md.", ["docs/benchmarks.md"]),
        ("`bench/out/write_path.json`, and js/test/", ["bench/out/write_path.json", "js/test/"]),
        ("`.venv-bench/bin/python` and `static/pgbinding/x.js`", []),
        ("{% static 'pgbinding/pgbinding.js' %} https://example.com/docs/x.md", []),
        ("[a](../docs/protocol.md)", ["../docs/protocol.md"]),
    ],
)
def test_path_pattern(text: str, found: list[str]) -> None:
    assert list(paths(text, FOLDER_PATH)) + list(paths(text, PACKAGE_PATH)) == found


def test_checks_catch_what_they_should(tmp_path: Path) -> None:
    assert ignored("bench/out/write_path.json") and not ignored("bench/README.md")
    assert resolves("docs/", ROOT) and not resolves("docs/no-such-file.md", ROOT)
    assert resolves("docs/benchmarks/*.png", ROOT) and not resolves("README.md/", ROOT)
    assert not resolves("../shared/DESIGN.md", ROOT / "docs")  # outside the repository
    assert slug("Faults: what is guaranteed") == "faults-what-is-guaranteed"
    assert slug("2. Bulk statement") == "2-bulk-statement"
    assert slug("`Demultiplexer` and [links](x.md)") == "demultiplexer-and-links"
    assert list(links("[a](x.md#y) `[b](z.md)` [c]: w.md\n[d]: v.md\n")) == ["x.md#y", "v.md"]
