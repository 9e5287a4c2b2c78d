#!/usr/bin/python
# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kernel_settings
short_description: Kernel modules and sysctls of a tunnel gateway, now and at boot, or taken back
version_added: 0.2.0
author: sitelink.gateway developers (!UNKNOWN)
description:
  - One call for the kernel settings a gateway needs, applied and persisted, or retired.
  - With O(state=present), loads the missing O(modules) (C(modprobe)) and lists them in
    O(modules_file); sets each of O(sysctls) whose live value differs (through C(/proc/sys))
    and writes them to O(sysctl_file). Both files are the collection's own, written whole
    and atomically, with a C(Managed by sitelink.gateway) header. A sysctl that was in
    O(sysctl_file) and is no longer in O(sysctls) goes back, now, to the value it gets at
    boot (as with O(state=absent)); a module dropped from O(modules) stays loaded.
  - With O(state=present), a file C(/etc/modules-load.d/NAME.conf) holding exactly the line
    C(NAME) for one of O(modules) (what C(community.general.modprobe) wrote for an earlier
    version of the collection) is removed. Any other content keeps it.
  - Warns when the gateway's own sysctl configuration would give one of O(sysctls) another
    value at boot (a file read after O(sysctl_file) setting it too).
  - With O(state=absent), the kernel is left as the gateway's own configuration leaves it.
    O(sysctl_file) and O(modules_file) are removed (from a file without the collection's
    header, only the lines for O(sysctls) and O(modules) go, and the file once nothing but
    comments is left); so are the C(NAME.conf) files of an earlier version.
  - With O(state=absent), each of O(sysctls) (and any other sysctl O(sysctl_file) listed)
    gets the value the gateway's sysctl.d files and C(/etc/sysctl.conf) give it at boot,
    read as C(systemd-sysctl) reads them (by file name across C(/etc), C(/run),
    C(/usr/local/lib), C(/usr/lib), C(/lib); the last assignment wins; an explicit name beats
    a glob; a lone C(-name) keeps globs off it), else its O(builtin_defaults) value, else it
    is left as it is. Only those sysctls, and only when they differ, so forwarding never
    blips and nothing else is reset.
  - With O(state=absent), a module is unloaded only when no link of its kind is left but
    the kernel's own fallback device (C(tunl0) for C(ipip)), no other module or user holds
    it, and the gateway's own configuration (modules-load.d, C(modules_load=) on the kernel
    command line) does not load it at boot. Unloading C(ipip) would delete every ipip link,
    someone else's too. Modules other than C(ipip) stay loaded.
options:
  state:
    description: Apply and persist the settings, or take them back.
    type: str
    default: present
    choices: [present, absent]
  modules:
    description: Kernel modules loaded now and at every boot.
    type: list
    elements: str
    default: []
  sysctls:
    description:
      - Sysctl names (C(net.ipv4.ip_forward) or C(net/ipv4/ip_forward)) and values, set now
        and at every boot. Booleans are written as C(1) and C(0).
      - With O(state=absent), only the names are used.
    type: dict
    default: {}
  sysctl_file:
    description: The collection's sysctl.d file.
    type: path
    default: /etc/sysctl.d/90-sitelink-gateway.conf
  modules_file:
    description: The collection's modules-load.d file.
    type: path
    default: /etc/modules-load.d/sitelink-gateway.conf
  builtin_defaults:
    description:
      - The kernel's built-in value of each sysctl, set with O(state=absent) (or for a
        sysctl dropped from O(sysctls)) when the gateway's own configuration sets none.
        A sysctl missing here is then left as it is.
    type: dict
    default:
      net.ipv4.ip_forward: 0
      net.ipv4.conf.all.rp_filter: 0
      net.core.rmem_max: 212992
      net.core.wmem_max: 212992
extends_documentation_fragment:
  - sitelink.gateway.attributes
  - sitelink.gateway.attributes.platform
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The two files (and the removed files of an earlier version), and the live
      sysctl values that change.
  platform:
    platforms: linux
notes:
  - Needs root, C(modprobe), and C(ip) (to look for links with O(state=absent)).
  - Only the initial network namespace is searched for links that use a module.
"""

EXAMPLES = r"""
- name: IPIP, forwarding and loose reverse-path filtering, now and at boot
  sitelink.gateway.kernel_settings:
    modules: [ipip]
    sysctls:
      net.ipv4.ip_forward: 1
      net.ipv4.conf.all.rp_filter: 2

- name: Put the kernel back as the gateway's own configuration leaves it
  sitelink.gateway.kernel_settings:
    state: absent
    modules: [ipip]
    sysctls:
      net.ipv4.ip_forward: 1
      net.ipv4.conf.all.rp_filter: 2
"""

RETURN = r"""
done:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample:
    - modprobe ipip
    - write /etc/modules-load.d/sitelink-gateway.conf
    - remove /etc/modules-load.d/ipip.conf (written by an earlier version)
    - "net.ipv4.ip_forward: 0 -> 1"
    - write /etc/sysctl.d/90-sitelink-gateway.conf
kept:
  description: What was left as it is on purpose, and why.
  returned: always
  type: list
  elements: str
  sample:
    - "module ipip: kept, in use by foreign0"
    - "/etc/sysctl.d/90-sitelink-gateway.conf: kept, 1 line(s) the collection did not write"
sysctl_file:
  description: The collection's sysctl.d file.
  returned: always
  type: str
  sample: /etc/sysctl.d/90-sitelink-gateway.conf
modules_file:
  description: The collection's modules-load.d file.
  returned: always
  type: str
  sample: /etc/modules-load.d/sitelink-gateway.conf
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402  (Ansible convention: docs first)
from ansible_collections.sitelink.gateway.plugins.module_utils.kernel import (  # noqa: E402
    BUILTIN_DEFAULTS,
    DEFAULT_MODULES_FILE,
    DEFAULT_SYSCTL_FILE,
    run_module,
)


def build_module():
    return AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "absent"]),
            modules=dict(type="list", elements="str", default=[]),
            sysctls=dict(type="dict", default={}),
            sysctl_file=dict(type="path", default=DEFAULT_SYSCTL_FILE),
            modules_file=dict(type="path", default=DEFAULT_MODULES_FILE),
            builtin_defaults=dict(type="dict", default=dict(BUILTIN_DEFAULTS)),
        ),
        supports_check_mode=True,
    )


def main():
    run_module(build_module())


if __name__ == "__main__":
    main()
