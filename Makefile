# sitelink.gateway: `make setup` once, then `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV    := .venv
BIN     := $(CURDIR)/$(VENV)/bin
PY      := $(BIN)/python
export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.cache/collections
COLLECTION_LINK := .cache/collections/ansible_collections/sitelink/gateway
# Debian packages the lab and the namespace tests need.
APT_PACKAGES := qemu-system-x86 qemu-utils mmdebstrap e2fsprogs iproute2 nftables \
                openssh-client iputils-ping socat python3
DEMO_STATE := /var/tmp/sitelink-lab/demo

.PHONY: help setup deps lint unit integration molecule build test demo bench clean

help:
	@echo "make setup    venv with pinned controller dependencies (PyPI only)"
	@echo "make test     lint, unit and integration tests, collection build, molecule test"
	@echo "make demo     boot the case-study lab, run site.yml, show it working, tear down"
	@echo "make bench    time the first and second site.yml run on the lab"

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../../.. $@

setup: $(VENV)/.installed $(COLLECTION_LINK)

# Installs the lab's system packages when one is missing (CI starts bare).
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/ansible-lint --profile production

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup deps
	$(PY) -m pytest -q tests/integration

# The tarball must install and work: docs of every plugin and role render from
# the installed copy, and the site playbook resolves.
build: setup
	rm -rf build && mkdir -p build
	$(BIN)/ansible-galaxy collection build --output-path build .
	$(BIN)/ansible-galaxy collection install --force --offline --no-deps -p build/installed build/sitelink-gateway-*.tar.gz
	export ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/installed; \
	for doc in module:ipip_tunnel module:nft_table filter:network_plan role:office role:kernel \
	           role:tunnel role:masquerade role:relay; do \
	  $(BIN)/ansible-doc --json -t $${doc%%:*} sitelink.gateway.$${doc#*:} \
	    | $(PY) -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d else "no docs: '"$$doc"'")'; \
	done; \
	cd build && $(BIN)/ansible-playbook --syntax-check -i ../examples/case-study/inventory.yml sitelink.gateway.site
	@echo "collection builds, installs, and its docs render"

molecule: setup deps
	$(BIN)/molecule test

test: lint unit integration build molecule

demo: setup deps
	$(PY) lab/run.py demo

bench: setup deps
	$(PY) lab/run.py bench

clean:
	rm -rf build .pytest_cache .ruff_cache
