# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check the HTML site tools/build_docs.sh built, beyond what Sphinx checks.

    docs/check_site.py HTML_DIR ROLES_DIR

- The front page is docs/front_page.rst, not antsibull's placeholder: it has the
  case study, the quick start, security and a reference section, and links to
  both guides, the collection's index and every role.
- Every role (every directory of ROLES_DIR) has a page whose title says what it
  is, and a summary in the collection's index and in the index of all roles.

Exits 1 naming every problem.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

COLLECTION = "collections/sitelink/gateway"
PLACEHOLDER = "Welcome to my Ansible collection"
FRONT_SECTIONS = ("the-case-study", "quick-start", "security", "reference")
FRONT_PHRASE = "builds a private network between offices"
GUIDES = ("guide_quickstart", "guide_security")
DASH = "\N{EN DASH}"  # what Sphinx makes of antsibull's " -- "


class Page(HTMLParser):
    """The parts of a page the checks read: titles, sections, links, list items."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.h1: list[str] = []
        self.section_ids: set[str] = set()
        self.links: set[str] = set()
        # (links, text) of each <li> of the page's body; the navigation's (class
        # toctree-l1...) are left out, they repeat the pages' titles.
        self.items: list[tuple[set[str], str]] = []
        self._h1: list[str] | None = None
        self._skip = 0  # inside a headerlink anchor (its text is a pilcrow)
        self._open_items: list[tuple[set[str], list[str], bool]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and attrs.get("id"):
            self.section_ids.add(attrs["id"])
        elif tag == "h1":
            self._h1 = []
        elif tag == "li":
            navigation = any(c.startswith("toctree-l") for c in (attrs.get("class") or "").split())
            self._open_items.append((set(), [], navigation))
        elif tag == "a":
            if "headerlink" in (attrs.get("class") or "").split():
                self._skip += 1
            href = (attrs.get("href") or "").split("#", 1)[0]
            if href:
                self.links.add(href)
                for links, _text, _navigation in self._open_items:
                    links.add(href)

    def handle_endtag(self, tag):
        if tag == "h1" and self._h1 is not None:
            self.h1.append(" ".join("".join(self._h1).split()))
            self._h1 = None
        elif tag == "li" and self._open_items:
            links, text, navigation = self._open_items.pop()
            if not navigation:
                self.items.append((links, " ".join("".join(text).split())))
        elif tag == "a" and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if self._skip:
            return
        if self._h1 is not None:
            self._h1.append(data)
        for _links, text, _navigation in self._open_items:
            text.append(data)


def _page(html: Path, name: str, problems: list[str]) -> Page | None:
    path = html / name
    if not path.is_file():
        problems.append(f"{name}: missing")
        return None
    return Page(path.read_text(encoding="utf-8"))


def check_front_page(html: Path, roles: list[str]) -> list[str]:
    problems: list[str] = []
    page = _page(html, "index.html", problems)
    if page is None:
        return problems
    text = (html / "index.html").read_text(encoding="utf-8")
    if PLACEHOLDER in text:
        problems.append(f"index.html: antsibull's placeholder ({PLACEHOLDER!r})")
    if FRONT_PHRASE not in text:
        problems.append(f"index.html: not docs/front_page.rst (no {FRONT_PHRASE!r})")
    for section in FRONT_SECTIONS:
        if section not in page.section_ids:
            problems.append(f"index.html: no section {section!r}")
    wanted = [f"{COLLECTION}/index.html"]
    wanted += [f"{COLLECTION}/docsite/{guide}.html" for guide in GUIDES]
    wanted += [f"{COLLECTION}/{role}_role.html" for role in roles]
    for link in wanted:
        if link not in page.links:
            problems.append(f"index.html: no link to {link}")
    return problems


def _summary(page: Page, link: str) -> str | None:
    """The text after the dash of the index entry that links to that page."""
    for links, text in page.items:
        if links == {link} and DASH in text:
            return text.split(DASH, 1)[1].strip()
    return None


def check_roles(html: Path, roles: list[str]) -> list[str]:
    problems: list[str] = []
    indexes = {
        f"{COLLECTION}/index.html": "{role}_role.html",
        "collections/index_role.html": "sitelink/gateway/{role}_role.html",
    }
    pages = {name: _page(html, name, problems) for name in indexes}
    for role in roles:
        name = f"{COLLECTION}/{role}_role.html"
        page = _page(html, name, problems)
        if page is not None:
            title = page.h1[0] if page.h1 else ""
            if not title.partition(f" role {DASH} ")[2].strip():
                problems.append(f"{name}: the title says nothing about the role: {title!r}")
        for index, link in indexes.items():
            if pages[index] is not None and not _summary(pages[index], link.format(role=role)):
                problems.append(f"{index}: the {role} role has no summary")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: check_site.py HTML_DIR ROLES_DIR", file=sys.stderr)
        return 2
    html, roles_dir = Path(argv[0]), Path(argv[1])
    roles = sorted(path.name for path in roles_dir.iterdir() if path.is_dir())
    if not roles:
        print(f"check_site: no roles in {roles_dir}", file=sys.stderr)
        return 1
    problems = check_front_page(html, roles) + check_roles(html, roles)
    for problem in problems:
        print(f"check_site: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
