# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The general meaning of each attribute the collection's modules document. A
# module extends these and sets its own support (and, where it helps, details;
# ACTION sets the support itself, see there):
#
#   extends_documentation_fragment:
#     - sitelink.gateway.attributes
#     - sitelink.gateway.attributes.platform
#   attributes:
#     check_mode:
#       support: full
#       details: What it does in check mode.

from __future__ import annotations


class ModuleDocFragment:
    # Every module: check mode and diff mode.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying
      the target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check
      mode), when in diff mode.
"""

    # Modules that name the systems they run on (with platforms).
    PLATFORM = r"""
attributes:
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    # Modules whose work is done, at least in part, by an action plugin on the controller.
    # Having one is all there is to it, so the support is set here too; a module adds
    # only its details (what its action plugin does).
    ACTION = r"""
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options
      can be executed on the controller.
    support: full
"""
