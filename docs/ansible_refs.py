# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sphinx extension for tools/build_docs.sh: Ansible's own doc labels, offline.

The pages antsibull-docs writes refer to a few labels of the Ansible docs
(``common_return_values``, ...) and to ansible.builtin plugins
(``M(ansible.builtin.copy)`` becomes the label
``ansible_collections.ansible.builtin.copy_module``). Intersphinx would resolve
them from an inventory downloaded from docs.ansible.com; the build is offline,
so they link to those pages directly. A builtin plugin is linked only when the
installed ansible-core has it, so a misspelt name still fails. Any other
unresolved label stays a warning, which ``sphinx-build -W`` makes an error.
"""

from __future__ import annotations

import re
from pathlib import Path

import ansible
from docutils import nodes

ANSIBLE_DOCS = "https://docs.ansible.com/ansible/latest/"
LABELS = {
    "action_plugins": ("plugins/action.html", "Action plugins"),
    "ansible_configuration_settings": (
        "reference_appendices/config.html",
        "Ansible Configuration Settings",
    ),
    "common_return_values": ("reference_appendices/common_return_values.html", "Return Values"),
}
BUILTIN_LABEL = re.compile(r"ansible_collections\.ansible\.builtin\.(\w+)_([a-z]+)")
ANSIBLE_PACKAGE = Path(ansible.__file__).parent


def _builtin(name: str, plugin_type: str) -> bool:
    """Whether the installed ansible-core ships that ansible.builtin plugin."""
    if plugin_type == "module":
        return (ANSIBLE_PACKAGE / "modules" / f"{name}.py").is_file()
    folder = ANSIBLE_PACKAGE / "plugins" / plugin_type
    # Filters and tests are documented one per file (name.yml); other plugins
    # are one per module (name.py).
    return any((folder / f"{name}{ext}").is_file() for ext in (".py", ".yml"))


def _target(label: str) -> tuple[str, str] | None:
    if label in LABELS:
        return LABELS[label]
    match = BUILTIN_LABEL.fullmatch(label)
    if match and _builtin(*match.groups()):
        name, plugin_type = match.groups()
        return (
            f"collections/ansible/builtin/{name}_{plugin_type}.html",
            f"ansible.builtin.{name}",
        )
    return None


def _resolve(app, env, node, contnode):
    if node.get("refdomain") != "std" or node.get("reftype") != "ref":
        return None
    found = _target(node.get("reftarget"))
    if found is None:
        return None
    path, title = found
    reference = nodes.reference("", "", internal=False, refuri=ANSIBLE_DOCS + path)
    reference += contnode if node.get("refexplicit") else nodes.inline(title, title)
    return reference


def setup(app):
    app.connect("missing-reference", _resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
