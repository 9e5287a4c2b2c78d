# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The office network, planned on the controller.

Pure, typed functions with no Ansible imports, behind one front door that reads
Ansible's hostvars and plans once per run (``inventory``): the inventory's ``office_*``
variables go in (``schema``), every problem is collected and reported at once
(``PlanError``), a strategy per topology returns the links (``topologies``),
``build`` plans the network, each feature plans its part and writes its section
(``tunnels``, ``ipsec``, ``firewall``, ``masquerade``, ``relay``), and
``gateway.office_plan`` is each gateway's own plan, rendered as text and as a
picture (``render``). Secrets never enter the plan (``secrets``).
"""
