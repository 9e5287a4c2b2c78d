# sitelink.gateway: `make setup` once, then `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV    := .venv
BIN     := $(CURDIR)/$(VENV)/bin
PY      := $(BIN)/python
export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.cache/collections
# Nothing outside the checkout and /tmp: Ansible's temp files, SSH control sockets
# and Galaxy cache, ansible-lint's copy of the collection, and pip's, Molecule's and
# ansible-lint's caches all stay in .cache/ (.ci/run checks it).
export ANSIBLE_HOME := $(CURDIR)/.cache/ansible
# ansible-core 2.19 keeps SSH control sockets in ~/.ansible/cp whatever ANSIBLE_HOME says.
export ANSIBLE_SSH_CONTROL_PATH_DIR := $(CURDIR)/.cache/ansible/cp
export XDG_CACHE_HOME := $(CURDIR)/.cache/xdg
COLLECTION_LINK := .cache/collections/ansible_collections/sitelink/gateway
# Debian packages the lab and the namespace tests need, and shellcheck, without
# which ansible-test sanity skips its shellcheck test.
APT_PACKAGES := qemu-system-x86 qemu-utils mmdebstrap e2fsprogs iproute2 nftables \
                openssh-client iputils-ping socat python3 graphviz shellcheck
# Debian packages only make ee-image needs: podman with runc (crun refuses this
# machine's cgroups), mmdebstrap for the local base image.
EE_APT_PACKAGES := podman runc mmdebstrap
# The ansible-core release .venv is built on: make setup CORE=2.19 picks one of
# requirements/core-*.txt; later make commands keep it (.venv/.core). Without one,
# the newest. tools/core_matrix.py picks the controller Python each release needs.
CORE ?= $(or $(shell cat $(VENV)/.core 2>/dev/null),$(shell python3 tools/core_matrix.py default))
# ansible-test runs on the venv's Python; gateways may have 3.9 (Debian 11).
CONTROLLER_PYTHON = $(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
GATEWAY_PYTHON := 3.9
ANSIBLE_TEST := $(PY) tools/run_ansible_test.py
COLLECTION_VERSION = $(shell sed -n 's/^version: *//p' galaxy.yml)

.PHONY: help setup deps ee-deps lint sanity schema relay unit matrix checks integration molecule build ee ee-image \
        docs release test demo bench bench-plan bench-relay molecule-bench scale plan clean

help:
	@echo "Start here (no root, no gateway contacted):"
	@echo "  make setup        .venv with pinned Ansible, linters and test tools (PyPI only):"
	@echo "                    ansible-core $(shell python3 tools/core_matrix.py default), or CORE=2.19|2.20|...; then: . .venv/bin/activate"
	@echo "  make plan         redraw both examples' plans and pictures (examples/*/plan; needs Graphviz)"
	@echo "  make build        the collection tarball in build/, installed and checked"
	@echo "  make docs         the HTML docs site in build/docs (Sphinx, -W)"
	@echo "Checks (make test runs them all, about 40 minutes on 2 cores, root):"
	@echo "  make lint         ruff, the office schema's generated files, ansible-lint, changelog, docs lint"
	@echo "  make sanity       ansible-test sanity; Python $(GATEWAY_PYTHON) for what runs on gateways"
	@echo "  make unit         unit tests: modules, module_utils, controller plugins, the relay"
	@echo "  make matrix       ansible-test sanity and units on the other tested ansible-core releases"
	@echo "  make checks       sanity, unit, integration, build, docs and ee in a row (make test runs"
	@echo "                    make matrix beside it, then molecule)"
	@echo "  make integration  playbooks and the relay in network namespaces (root)"
	@echo "  make ee           the execution environment's build context in build/ee, checked"
	@echo "  make molecule     the three Molecule scenarios on QEMU gateways (root): case study, offices, hubs"
	@echo "  make test         all of the above, plus build and docs"
	@echo "Labs and measurements (root; install QEMU and mmdebstrap when missing):"
	@echo "  make deps         the Debian packages the lab and the namespace tests need"
	@echo "  make demo         boot the case-study lab, run site.yml and verify.yml, show traffic, tear down"
	@echo "  make bench        planning at scale, the relay against socat, then site.yml, verify.yml,"
	@echo "                    TCP throughput with and without ESP, ipip_tunnel run times (offices lab),"
	@echo "                    a link healing by itself after Brooklyn is cut off the lab's Internet"
	@echo "                    for 5 minutes (case-study lab), the crowd lab at N=$(SCALE_BENCH_N) (make scale),"
	@echo "                    and make molecule-bench"
	@echo "  make molecule-bench  the lab tests make test leaves out for time: a lockout rolled back,"
	@echo "                    each case-study gateway rebooted alone, key rotation one step apart,"
	@echo "                    a hub rebooted"
	@echo "  make bench-plan   planning only;  make bench-relay   the relay only (and a hub's fan-out)"
	@echo "  make ee-image     the execution environment image, built with podman offline (a local"
	@echo "                    Debian base, wheels from PyPI), then checked in the image (root; in"
	@echo "                    make release, not make test; make ee-deps: podman, runc, mmdebstrap)"
	@echo "  make scale N=200  the crowd lab: a hub and N-1 branches (two real, the rest simulated"
	@echo "                    by one VM); site.yml, SAs, reboot, broadcasts, verify.yml, removal"
	@echo "                    (default N=$(SCALE_N); /tmp/sitelink-lab/scale/scale-N.json)"
	@echo "Maintenance:"
	@echo "  make schema       regenerate the office role's specs, defaults and README table from the schema"
	@echo "  make relay        rebuild roles/relay/files/sitelink-relay from relay/sitelink_relay"
	@echo "  make release VERSION=x.y.z   bump galaxy.yml, release the changelog, build the tarball and the EE image"
	@echo "  make clean        remove build/ and the test caches (keeps .venv and .cache)"

# A fresh venv for another release: its Python may differ.
$(VENV)/.installed-$(CORE): requirements.txt requirements/core-$(CORE).txt
	@[ -f requirements/core-$(CORE).txt ] || { echo "CORE=$(CORE): no requirements/core-$(CORE).txt"; exit 2; }
	rm -rf $(VENV)
	$$(python3 tools/core_matrix.py python $(CORE)) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements/core-$(CORE).txt
	echo $(CORE) > $(VENV)/.core
	touch $@

$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../../.. $@

setup: $(VENV)/.installed-$(CORE) $(COLLECTION_LINK)

# $(call apt_install,PACKAGES): installs those of the Debian PACKAGES that are missing.
define apt_install
@missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing:$$missing"; \
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
fi
endef

# Installs the lab's system packages when one is missing (CI starts bare).
deps:
	$(call apt_install,$(APT_PACKAGES))

lint: setup
	$(PY) tools/core_matrix.py check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PY) tools/office_schema.py --check
	$(BIN)/ansible-lint --profile production
	$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-docs --config-file docs/antsibull-docs.cfg lint-collection-docs --plugin-docs --check-extra-docs-refs .

# ansible-test on a copy of the tree (tools/run_ansible_test.py says why). Then
# Python $(GATEWAY_PYTHON) for what runs on gateways: modules and module_utils, and the
# relay program, which ansible-test only holds to it as module_utils of a view.
sanity: setup
	$(ANSIBLE_TEST) sanity --venv --python $(CONTROLLER_PYTHON)
	$(ANSIBLE_TEST) sanity --venv --python $(GATEWAY_PYTHON) --test compile --test import
	$(ANSIBLE_TEST) --relay sanity --venv --python $(GATEWAY_PYTHON) --test compile --test import

# Regenerate the office role's specs and defaults and the README table from
# the one schema (plugins/plugin_utils/plan/schema.py).
schema: setup
	$(PY) tools/office_schema.py

# The examples' plans and pictures, checked in (a unit test keeps them current).
# The pictures need Graphviz's dot, nothing else of the lab.
plan: setup
	@command -v dot >/dev/null || { echo "make plan: Graphviz's dot is missing (apt install graphviz)"; exit 1; }
	$(BIN)/ansible-playbook -i examples/case-study/inventory.yml plan.yml \
	  -e sitelink_plan_dir=$(CURDIR)/examples/case-study/plan -e sitelink_plan_console=summary
	$(BIN)/ansible-playbook -i examples/hub-and-branches/inventory.yml plan.yml \
	  -e sitelink_plan_dir=$(CURDIR)/examples/hub-and-branches/plan -e sitelink_plan_console=summary

# Modules, module_utils and controller plugins with ansible-test units (the
# standard tests/unit/plugins layout); the relay's own tests beside its package.
unit: setup
	$(ANSIBLE_TEST) units --venv --python $(CONTROLLER_PYTHON)
	$(PY) -m pytest -q relay/tests

# ansible-test sanity and units on every other ansible-core release of the matrix
# (requirements/core-*.txt), each in .cache/ansible-core/X.Y with its own Python.
matrix: setup
	$(PY) tools/core_matrix.py run --skip $(CORE)

# Plays the tests run on localhost (connection local) keep their module files in
# remote_tmp, which is ~/.ansible/tmp whatever ANSIBLE_HOME says.
integration: setup deps
	ANSIBLE_REMOTE_TMP=$(CURDIR)/.cache/ansible/remote-tmp $(PY) -m pytest -q tests/integration

# The relay's package (relay/sitelink_relay) as the one file gateways run; a unit
# test keeps the checked-in copy equal to a fresh build.
relay:
	python3 tools/build_relay.py

# The tarball must install and work: docs of every plugin and role render from
# the installed copy, and the site playbook resolves.
build: setup relay
	rm -rf build && mkdir -p build
	$(BIN)/ansible-galaxy collection build --output-path build .
	$(BIN)/ansible-galaxy collection install --force --offline --no-deps -p build/installed build/sitelink-gateway-*.tar.gz
	export ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/installed; \
	for doc in module:ipip_tunnel module:nft_table module:office_plan module:gateway_health module:kernel_settings \
	           module:ipsec_links module:gateway_confirm module:relay_service role:firewall role:ipsec \
	           module:health_report filter:office_gateway filter:office_rollout role:office role:kernel \
	           role:tunnel role:masquerade role:relay; do \
	  $(BIN)/ansible-doc --json -t $${doc%%:*} sitelink.gateway.$${doc#*:} \
	    | $(PY) -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d else "no docs: '"$$doc"'")'; \
	done; \
	cd build && for playbook in site plan verify retire; do \
	  $(BIN)/ansible-playbook --syntax-check -i ../examples/case-study/inventory.yml sitelink.gateway.$$playbook; \
	done
	@echo "collection builds, installs, and its docs render"

# Three scenarios, one after the other (each boots its own VMs): the case study,
# a hub and two branches, two hubs and two branches.
molecule: setup deps
	$(BIN)/molecule test -s default
	$(BIN)/molecule test -s offices
	$(BIN)/molecule test -s hubs

# The execution environment's build context (no container engine needed), checked:
# the collection tarball, ansible-core, and every Python and system dependency.
ee: build
	$(PY) tools/check_ee.py --tarball build/sitelink-gateway-$(COLLECTION_VERSION).tar.gz --context build/ee

# The execution environment image, built with podman and no registry, then checked
# in the image (tools/ee_image.py): the collection's version, every module's docs,
# plan.yml on the case study with its picture, and ansible-navigator when the venv
# has it. podman's storage is .cache/ee/containers (podman outside the tool does not
# see it: python tools/ee_image.py --podman images). Root; not in make test.
ee-image: build ee-deps
	$(PY) tools/ee_image.py --tarball build/sitelink-gateway-$(COLLECTION_VERSION).tar.gz \
	  $(if $(wildcard $(BIN)/ansible-navigator),--navigator)

ee-deps:
	$(call apt_install,$(EE_APT_PACKAGES))

# The HTML docs site (antsibull-docs and Sphinx), from the same plugin and role docs.
docs: setup
	tools/build_docs.sh

# make release VERSION=x.y.z: galaxy.yml's version, the changelog's release (from
# changelogs/fragments, which it removes), the tarball in build/, and the EE image
# built from it and checked (root).
release: setup
	@[[ "$(VERSION)" =~ ^[0-9]+\.[0-9]+\.[0-9]+$$ ]] || { echo "usage: make release VERSION=x.y.z"; exit 2; }
	sed -i 's/^version: .*/version: $(VERSION)/' galaxy.yml
	$(BIN)/antsibull-changelog release --reload-plugins
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
	$(MAKE) build ee-image
	@echo "released $(VERSION): commit galaxy.yml, changelogs/ and CHANGELOG.rst, tag $(VERSION)"

# The ansible-core matrix runs beside the checks that need no VM (its own copy of
# the collection; its output comes when it ends): it is mostly ansible-test
# installing and waiting. Then the Molecule scenarios, alone: their VMs are timed.
test: lint
	$(MAKE) --no-print-directory -j2 --output-sync=recurse matrix checks
	$(MAKE) --no-print-directory molecule

# make test's checks before the labs, one after the other.
checks:
	$(MAKE) --no-print-directory -j1 sanity unit integration build docs ee

demo: setup deps
	$(PY) lab/run.py demo

bench: bench-plan bench-relay
	$(PY) lab/run.py bench
	$(PY) lab/run.py heal
	$(PY) lab/scale.py $(SCALE_BENCH_N)
	$(MAKE) --no-print-directory molecule-bench

# The lab tests make test leaves out for time (SITELINK_BENCH=1): a lockout rolled
# back and each gateway of the case study rebooted alone, key rotation one step
# apart, a hub rebooted.
molecule-bench: setup deps
	SITELINK_BENCH=1 PYTEST_ADDOPTS="-k 'heals_its_link_by_itself or cuts_ssh_is_rolled_back'" \
	  $(BIN)/molecule test -s default
	# The one-step-apart test starts where the rotation in a bad order ends.
	SITELINK_BENCH=1 PYTEST_ADDOPTS="-k 'rotation_in_a_bad_order or authenticates_with_the_keys_of_its_step'" \
	  $(BIN)/molecule test -s offices
	SITELINK_BENCH=1 $(BIN)/molecule test -s hubs

# The relay against socat, side by side in network namespaces (root): capacity,
# latency and loss, service and compat modes, authentication on and off; then a hub's
# fan-out to 10, 100 and 1000 peers (a key per link). About 4 minutes.
bench-relay: setup deps relay
	python3 bench/relay.py

# The crowd lab (lab/scale.py): N offices, a hub and two branches as real gateways,
# the other N-3 simulated by one "crowd" VM. Not in make test.
SCALE_N := 50
SCALE_BENCH_N := 20
scale: setup deps
	$(PY) lab/scale.py $(or $(N),$(SCALE_N))

bench-plan: setup
	$(PY) bench/plan.py

clean:
	rm -rf build .pytest_cache .ruff_cache
