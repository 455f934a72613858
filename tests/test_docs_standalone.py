"""The documentation stands alone (issue #12): no page cites a file outside the repository (the
project's private contract, a sibling checkout), and every relative link reaches a file in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "templates").rglob("*.html")]
)
# What citing outside the repository looked like: the contract and its folder, absolute paths
# of the machine the project was written on.
OUTSIDE = re.compile(r"SPEC\.md|CONVENTIONS\.md|\bshared/|\.\./shared|/work/|\bSPEC\b")
# Markdown links: [text](target), the target up to a space or ')'.
LINK = re.compile(r"\]\(([^)\s]+)\)")


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_pages_are_found() -> None:
    names = {page_id(path) for path in PAGES}
    assert {"README.md", "docs/api.md", "docs/schemas.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_page_cites_anything_outside_the_repository(page: Path) -> None:
    found = [
        f"{page_id(page)}:{number}: {line.strip()}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, "state the rule instead of citing it:\n" + "\n".join(found)


@pytest.mark.parametrize("page", [p for p in PAGES if p.suffix == ".md"], ids=page_id)
def test_every_relative_link_reaches_a_file_of_the_repository(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor of the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert not broken, f"{page_id(page)}: links outside the repository or to nothing: {broken}"
