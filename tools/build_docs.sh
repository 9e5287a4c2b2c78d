#!/usr/bin/env bash
# Build the collection's HTML documentation: every module, filter and role, and
# the guides in docs/docsite, into build/docs/build/html (index.html).
#
#   tools/build_docs.sh
#
# antsibull-docs writes a Sphinx project into build/docs (sphinx-init), with
# docs/front_page.rst as its front page, which then renders the collection the
# current Ansible finds (sitelink.gateway through ANSIBLE_COLLECTIONS_PATH, by
# default .cache/collections, the link `make setup` creates) and builds it with
# sphinx-build -W: any warning fails the build. Offline: the project has no
# intersphinx inventories to download. Then docs/check_site.py checks the site:
# the front page is ours, and every role says what it is.
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -x "$ROOT/.venv/bin/antsibull-docs" ]]; then
  export PATH="$ROOT/.venv/bin:$PATH"
fi
export ANSIBLE_COLLECTIONS_PATH="${ANSIBLE_COLLECTIONS_PATH:-$ROOT/.cache/collections}"

link="$ANSIBLE_COLLECTIONS_PATH/ansible_collections/sitelink/gateway"
if [[ ! -e "$link/galaxy.yml" ]]; then
  echo "build_docs: no sitelink.gateway at $link (run make setup)" >&2
  exit 1
fi
for tool in antsibull-docs sphinx-build; do
  command -v "$tool" >/dev/null || { echo "build_docs: $tool not found (run make setup)" >&2; exit 1; }
done

DEST="$ROOT/build/docs"
rm -rf "$DEST"
mkdir -p "$DEST"
chmod 0755 "$DEST" # antsibull-docs writes only into a directory no one else can write to

antsibull-docs --config-file docs/antsibull-docs.cfg sphinx-init \
  --use-current \
  --fail-on-error \
  --dest-dir "$DEST" \
  --project sitelink.gateway \
  --copyright "sitelink.gateway developers" \
  --title "sitelink.gateway" \
  --index-rst-source docs/front_page.rst \
  sitelink.gateway >/dev/null

# sphinx-init maps Python's, Jinja's and Ansible's docs for intersphinx; fetching
# their inventories needs the network, and a failed fetch is a warning, which -W
# turns into an error. Offline, docs/ansible_refs.py links the few Ansible doc
# labels the generated pages use instead. docs/role_summaries.py gives the office
# role (no `main` entry point) its summary in the indexes and its page's title.
cat >>"$DEST/conf.py" <<CONF

# tools/build_docs.sh: offline, no intersphinx inventories to download.
import sys  # noqa: E402
sys.path.insert(0, "$ROOT/docs")
extensions += ["ansible_refs", "role_summaries"]
intersphinx_mapping = {}
sitelink_roles_dir = "$link/roles"
CONF

# sphinx-init writes its own antsibull-docs.cfg for build.sh, without our logging
# settings: antsibull would log to ~/antsibull.log, outside the checkout.
sed -n '/^logging_cfg = {/,/^}/p' docs/antsibull-docs.cfg >>"$DEST/antsibull-docs.cfg"
grep -q '^logging_cfg = {' "$DEST/antsibull-docs.cfg" || {
  echo "build_docs: no logging_cfg in docs/antsibull-docs.cfg" >&2
  exit 1
}

# The generated build.sh runs antsibull-docs, then sphinx-build: only with -W
# does a warning (an unresolved reference, a broken toctree) fail this build.
grep -Eq '^sphinx-build .* -W( |$)' "$DEST/build.sh" || {
  echo "build_docs: $DEST/build.sh does not run sphinx-build -W" >&2
  exit 1
}
"$DEST/build.sh"

html="$DEST/build/html"
for page in index.html \
  collections/sitelink/gateway/index.html \
  collections/sitelink/gateway/ipip_tunnel_module.html \
  collections/sitelink/gateway/office_role.html \
  collections/sitelink/gateway/office_gateway_filter.html \
  collections/sitelink/gateway/docsite/guide_quickstart.html; do
  [[ -s "$html/$page" ]] || { echo "build_docs: $html/$page is missing" >&2; exit 1; }
done
python3 docs/check_site.py "$html" "$link/roles"
echo "build_docs: $html/index.html"
