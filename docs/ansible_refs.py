# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sphinx extension for tools/build_docs.sh: Ansible's own doc labels, offline.

The pages antsibull-docs writes refer to a few labels of the Ansible docs
(``common_return_values``, ...). Intersphinx would resolve them from an
inventory downloaded from docs.ansible.com; the build is offline, so they
link to those pages directly. Any other unresolved label stays a warning,
which ``sphinx-build -W`` makes an error.
"""

from __future__ import annotations

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


def _resolve(app, env, node, contnode):
    if node.get("refdomain") != "std" or node.get("reftype") != "ref":
        return None
    found = LABELS.get(node.get("reftarget"))
    if found is None:
        return None
    path, title = found
    reference = nodes.reference("", "", internal=False, refuri=ANSIBLE_DOCS + path)
    reference += contnode if node.get("refexplicit") else nodes.inline(title, title)
    return reference


def setup(app):
    app.connect("missing-reference", _resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
