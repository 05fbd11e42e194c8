"""Every document the repository cites exists in it, with the sections it names.

A reference is a ``name.md`` or ``dir/name.md`` token in a .py, .yaml or .md file, optionally
followed by quoted section names (``docs/algorithms.md, "Policy losses"``). It resolves when
the path exists relative to the citing file's directory or one above it (up to the
repository root), or, for a bare file name, when some file of the repository has that
name; each quoted section must be (part of) a Markdown heading of the cited file.
"""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED_SUFFIXES = (".py", ".yaml", ".md")
SKIPPED_DIRS = {"__pycache__", "runs", "build", "dist", "node_modules"}
# Files the commands write into their output directories, named in docstrings and help texts.
GENERATED = {"summary.md", "results.md", "report.md"}
SECTION = r'"[^"\n]+"'
REFERENCE = re.compile(
    r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b"
    rf"(?:(?:,|:|'s)?[ \t]*({SECTION}(?:[ \t]*(?:,|and)[ \t]*{SECTION})*))?"
)


def _scanned_files(root: Path):
    for path in sorted(root.rglob("*")):
        if path == Path(__file__).resolve():  # its docstring and examples cite made-up files
            continue
        relative = path.relative_to(root).parts
        hidden = any(part.startswith(".") or part in SKIPPED_DIRS or part.endswith(".egg-info")
                     for part in relative)
        if path.is_file() and path.suffix in SCANNED_SUFFIXES and not hidden:
            yield path


def _resolve(reference: str, citing: Path, root: Path, by_name: dict[str, Path]) -> Path | None:
    """The cited file: relative to the citing file's directory or any directory above it up
    to the root (a package-relative path), or a bare name found anywhere."""
    for directory in (citing.parent, *citing.parent.parents):
        if (directory / reference).is_file():
            return directory / reference
        if directory == root:
            break
    return by_name.get(reference) if "/" not in reference else None


def _headings(document: Path) -> list[str]:
    return [line.lstrip("#").strip().lower() for line in document.read_text().splitlines()
            if line.startswith("#")]


def broken_references(root: Path) -> list[str]:
    """``"file:line: message"`` for every reference under ``root`` that does not resolve."""
    files = list(_scanned_files(root))
    by_name = {path.name: path for path in files}
    errors = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            for match in REFERENCE.finditer(line):
                reference, sections = match.group(1), match.group(2)
                if Path(reference).name in GENERATED:
                    continue
                where = f"{path.relative_to(root)}:{number}"
                document = _resolve(reference, path, root, by_name)
                if document is None:
                    errors.append(f"{where}: cites {reference}, which is not in the repository")
                    continue
                headings = _headings(document)
                for section in re.findall(SECTION, sections or ""):
                    if not any(section.strip('"').lower() in heading for heading in headings):
                        errors.append(f"{where}: {reference} has no section {section}")
    return errors


def test_every_cited_document_and_section_exists():
    assert broken_references(REPO) == []


def test_the_check_finds_missing_documents_and_sections(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Policy losses\n")
    (tmp_path / "code.py").write_text(
        '"""See docs/guide.md, "Policy losses" and guide.md: "Rewards".\n'
        'Also ALGORITHMS.md and docs/missing.md; the run writes OUT/summary.md."""\n'
    )
    assert broken_references(tmp_path) == [
        'code.py:1: guide.md has no section "Rewards"',
        "code.py:2: cites ALGORITHMS.md, which is not in the repository",
        "code.py:2: cites docs/missing.md, which is not in the repository",
    ]
