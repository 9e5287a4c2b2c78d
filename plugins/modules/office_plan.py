#!/usr/bin/python
# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The work is done on the controller by the action plugin of the same name
# (plugins/action/office_plan.py); this file carries its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: office_plan
short_description: Validate the office inventory and plan every gateway, on the controller
version_added: 0.2.0
author: sitelink.gateway developers (!UNKNOWN)
description:
  - Reads the C(office_*) variables of every host of O(group) - all of them, not only the hosts
    of the play, so C(--limit) still sees every peer - and validates them all against the
    office schema. Any problem fails the task with one message listing every problem, each
    naming the office, its host and the variable; unknown C(office_*) variables are problems too.
  - The office role runs it once per play (C(run_once)), then hands each gateway its own plan
    with the P(sitelink.gateway.office_gateway#filter) filter.
  - The same problem at several offices (a group variable, most often) is said once, naming the
    variable, how many offices have it, a few of them and the group they make up. A host variable
    that misses the C(office_) spelling (C(ofice_role), C(office-role), C(Office_role)) is warned
    about, with the variable it most likely meant.
  - With O(output_dir), writes C(network.txt), C(network.dot), C(network.svg) (when Graphviz's
    C(dot) is installed) and C(gateways/HOST.txt), and returns the text as a list of lines in
    RV(plan_lines), ending with where the files are. That is what C(playbooks/plan.yml) shows.
  - With O(output_dir), also writes C(external/NAME.txt) for each external peer
    (C(office_external_peers)), what its administrators configure on their side - IPsec
    connections with the key as a placeholder, IPIP tunnels and routes, firewall, relay.
    Files of gateways and peers no longer in the inventory are removed.
  - Never connects to a gateway and never writes or returns a secret (an external peer's
    C(psk) is read, to key its links, and shown nowhere).
options:
  group:
    description: Inventory group of the office gateways.
    type: str
    default: offices
  output_dir:
    description: Where to write the rendered plan, for every gateway.
    type: path
  console:
    description:
      - What RV(plan_lines) holds. C(full) is the network and every gateway; C(summary) the
        network only; C(auto) is C(full) up to 20 gateways. Either way the last line says where
        each gateway's plan is.
    type: str
    choices: [auto, full, summary]
    default: auto
extends_documentation_fragment:
  - sitelink.gateway.attributes
  - sitelink.gateway.attributes.action
  - sitelink.gateway.attributes.platform
attributes:
  action:
    details: The plan is made by the action plugin, on the controller.
  check_mode:
    support: full
    details: Works the same in check mode; with O(output_dir), the files are written.
  diff_mode:
    support: none
  platform:
    platforms: all
    details: Runs on the controller only.
notes:
  - Runs on the controller only.
"""

EXAMPLES = r"""
- name: Validate every office
  sitelink.gateway.office_plan:
    group: offices
  run_once: true

- name: Render the plan into ./plan
  sitelink.gateway.office_plan:
    output_dir: ./plan
"""

RETURN = r"""
summary:
  description: Counts of offices, gateways, links and relay flows, and the topology.
  returned: success
  type: dict
plan_lines:
  description:
    - The plan as readable text, a line per item (a list prints a line per item under any
      callback; one string would print as JSON with its line breaks escaped), then where the files
      were written.
  returned: when O(output_dir) is set
  type: list
  elements: str
files:
  description: Files written for the whole network.
  returned: when O(output_dir) is set
  type: list
  elements: path
"""
