"""Every citation in the code, configs, tests, paper reference files and README points into the repository:
to a page of docs/methods/ and, where it names one, to a heading that page has (anchors as GitHub renders
them). Research notes kept outside the repository (``methods.md §2.9``, "the notes") are not cited."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods"
SCANNED = [*(p for d in ("src", "conf", "tests", "results") for p in sorted((ROOT / d).rglob("*"))
             if p.suffix in {".py", ".yaml", ".yml", ".md", ".txt", ".toml"} and p.is_file()),
           ROOT / "README.md"]

# "methods.md §2.9", "sds_lora.md §1.6", "notes §1.8": a section of notes outside the repository
SECTION = re.compile(r"\b(?:[\w-]+\.md|notes?)`{0,2}\s*§")
# "(§2.13)", "(INFERRED, §2.3)": a section number with no document (the papers' own are "LoRAM §3.3")
BARE = re.compile(r"\((?:[A-Z][A-Z -]*,\s*)?§\s*\d")
# "the notes", "shared notes", "NF in the notes", "the SDS-LoRA notes": the notes themselves
NOTES = re.compile(r"\b(?:the|shared|research|reconstruction|SDS|SDS-LoRA)\s+notes\b", re.IGNORECASE)
DOC_LINK = re.compile(r"docs/methods/([\w.-]+\.md)(?:#([\w-]+))?")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: link text kept, lower case, punctuation other than ``-`` and
    ``_`` dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (outside code fences); repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_anchor(match.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def _this_file(path: Path) -> bool:
    return path.resolve() == Path(__file__).resolve()


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Differences from the reference code", "differences-from-the-reference-code"),
    ("AltLoRA / AltLoRA+", "altlora--altlora"),
    ("ScaledAdamW (Riemannian-preconditioned LoRA)", "scaledadamw-riemannian-preconditioned-lora"),
    ("Overhead benchmark: FLOP model, memory model, reference numbers",
     "overhead-benchmark-flop-model-memory-model-reference-numbers"),
    ("`make bench` and [`make gpu-check`](x.md)", "make-bench-and-make-gpu-check"),
])
def test_anchor_is_the_one_github_renders(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor


def test_repeated_headings_are_numbered_as_on_github(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# A\n## Pitfalls\n```\n# not a heading\n```\n## Pitfalls\n")
    assert anchors(page) == {"a", "pitfalls", "pitfalls-1"}


def test_nothing_cites_notes_outside_the_repository() -> None:
    bad = [f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
           for path in SCANNED if not _this_file(path)
           for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
           if SECTION.search(line) or BARE.search(line) or NOTES.search(line)]
    assert not bad, "cite docs/methods/<page>.md#<anchor> instead:\n" + "\n".join(bad)


def test_every_docs_methods_citation_exists() -> None:
    pages = {p.name: anchors(p) for p in DOCS.glob("*.md")}
    bad = []
    for path in SCANNED + sorted(DOCS.parent.rglob("*.md")):
        if _this_file(path):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for page, anchor in DOC_LINK.findall(line):
                if page not in pages or (anchor and anchor not in pages[page]):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: docs/methods/{page}{'#' + anchor if anchor else ''}")
    assert not bad, "no such page or heading:\n" + "\n".join(bad)


def test_links_between_docs_methods_pages_exist() -> None:
    pages = {p.name: anchors(p) for p in DOCS.glob("*.md")}
    bad = []
    for path in sorted(DOCS.glob("*.md")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for page, anchor in re.findall(r"\]\((?!https?:)([\w.-]*\.md)?(?:#([\w-]+))?\)", line):
                target = page or path.name
                if target not in pages or (anchor and anchor not in pages[target]):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {page}#{anchor}")
    assert not bad, "no such page or heading:\n" + "\n".join(bad)
