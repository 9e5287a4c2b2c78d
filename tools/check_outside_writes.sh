#!/usr/bin/env bash
# Fails when something was written, since MARKER, where no make target may write:
# the user's home (Ansible's ~/.ansible, tool caches and configs, antsibull's
# log) and shared system places. Targets write into the checkout and /tmp only;
# `make deps` installing Debian packages is the one deliberate exception and
# writes none of these.
#
#   tools/check_outside_writes.sh MARKER     (a file touched before the run; .ci/run)
set -euo pipefail

marker=${1:?usage: $0 MARKER}
[[ -e "$marker" ]] || { echo "no such marker file: $marker" >&2; exit 2; }

places=(
  "$HOME/.ansible" "$HOME/.cache" "$HOME/.config" "$HOME/.local" "$HOME/.ssh"
  "$HOME/.pip" "$HOME/antsibull.log" "$HOME/.ansible-core-ci.key"
  /var/tmp /var/cache/sitelink-lab /etc/ansible /usr/share/ansible /usr/local
)
found=$(for place in "${places[@]}"; do
  [[ -e "$place" ]] && find "$place" -xdev -newer "$marker" -print 2>/dev/null
done | sort || true)
if [[ -n "$found" ]]; then
  echo "written outside the checkout and /tmp during the run:" >&2
  head -n 40 <<<"$found" | sed 's/^/  /' >&2
  echo "($(wc -l <<<"$found") paths)" >&2
  exit 1
fi
echo "nothing written outside the checkout and /tmp"
