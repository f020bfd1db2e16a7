"""The documents the code points at are in the repository, with the sections it names, and no
committed text names a path of the machine it was written on."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTER = re.compile(r"(?:(?<=[\s`(])|^)((?:\.\./)*[\w./-]*?(DESIGN|REFERENCES|EXAMPLES)\.md)(?:'s)?(?: sections? ([\d, and]+))?")
MACHINE_PATH = re.compile(r"(?<![\w$.])/(?:work|home|root|Users)/[\w.-]+")


def texts() -> list[Path]:
    """The committed code and prose: the packages, tests, benchmarks and every Markdown file."""
    out = [p for d in ("deployvit", "exporters", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    return out + [p for p in ROOT.rglob("*.md") if ".git" not in p.parts and "runs" not in p.parts]


def sections(doc: Path) -> set[str]:
    return set(re.findall(r"^## (\d+)\.", doc.read_text(), re.M))


def test_every_design_or_references_pointer_names_a_doc_and_section_that_exist():
    bad = []
    for path in texts():
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            for m in POINTER.finditer(line):
                doc = ROOT / "docs" / f"{m.group(2)}.md"
                if m.group(1) != f"docs/{m.group(2)}.md" and path.parent != ROOT / "docs":
                    bad.append(f"{path.relative_to(ROOT)}:{line_no}: {m.group(1)} (write docs/{m.group(2)}.md)")
                for number in re.findall(r"\d+", m.group(3) or ""):
                    if number not in sections(doc):
                        bad.append(f"{path.relative_to(ROOT)}:{line_no}: {doc.name} has no section {number}")
    assert not bad, "\n".join(bad)


def test_no_committed_text_names_a_machine_path():
    this = Path(__file__).resolve()
    bad = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)}" for p in texts() if p.resolve() != this
           for i, line in enumerate(p.read_text().splitlines(), 1) for m in MACHINE_PATH.finditer(line)]
    assert not bad, "\n".join(bad)
