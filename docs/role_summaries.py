# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sphinx extension for tools/build_docs.sh: a summary for every role.

antsibull-docs summarizes a role (in the role indexes and the title of its page)
with the short description of its ``main`` entry point. The office role has none
on purpose: its variables are published under the entry point ``inventory``,
because a ``main`` spec makes Ansible insert its own argument check before the
role, host by host, where the planner checks every office at once
(plugins/plugin_utils/plan/schema.py). Its index line would read "office role --"
and nothing more.

Where antsibull-docs left a role's summary empty, this fills in the role's own
description, ``galaxy_info.description`` of its meta/main.yml, before Sphinx
parses the page. A role with neither stays empty, and tools/build_docs.sh fails.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

# "* :ansplugin:`office role <sitelink.gateway.office#role>` --" (a collection's
# index) and "* :ansplugin:`sitelink.gateway.office#role` --" (the role index).
EMPTY_ENTRY = re.compile(
    r"^(?P<entry>\* :ansplugin:`(?:[^`<]*<)?(?P<fqcn>\w+\.\w+\.\w+)#role>?`) --[ \t]*$",
    re.MULTILINE,
)
# "sitelink.gateway.office role" over its underline: the title of the role's page.
EMPTY_TITLE = re.compile(r"^(?P<fqcn>\w+\.\w+\.\w+) role\n\++$", re.MULTILINE)


def _rst_text(text: str) -> str:
    return re.sub(r"([\\`*_|])", r"\\\1", text)


def role_descriptions(roles_dir: Path, collection: str) -> dict[str, str]:
    """FQCN -> the role's galaxy_info.description, without its final period."""
    found = {}
    for meta in sorted(roles_dir.glob("*/meta/main.yml")):
        data = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
        description = str((data.get("galaxy_info") or {}).get("description") or "").strip()
        if description:
            found[f"{collection}.{meta.parent.parent.name}"] = description.rstrip(".")
    return found


def fill(source: str, descriptions: dict[str, str]) -> str:
    """The page's source with every empty role summary filled in, where one is known."""

    def entry(match: re.Match) -> str:
        description = descriptions.get(match["fqcn"])
        if description is None:
            return match[0]
        return f"{match['entry']} -- {_rst_text(description)}"

    def title(match: re.Match) -> str:
        description = descriptions.get(match["fqcn"])
        if description is None:
            return match[0]
        text = f"{match['fqcn']} role -- {_rst_text(description)}"
        return f"{text}\n{'+' * len(text)}"

    return EMPTY_TITLE.sub(title, EMPTY_ENTRY.sub(entry, source))


def _source_read(app, docname, source):
    config = app.config
    descriptions = _descriptions(config.sitelink_roles_dir, config.sitelink_collection)
    source[0] = fill(source[0], descriptions)


@functools.cache
def _descriptions(roles_dir: str, collection: str) -> dict[str, str]:
    return role_descriptions(Path(roles_dir), collection)


def setup(app):
    app.add_config_value("sitelink_roles_dir", "", "env")
    app.add_config_value("sitelink_collection", "sitelink.gateway", "env")
    app.connect("source-read", _source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
