# imagebuild. Two commands on a fresh machine:
#   make golden   build + verify the default golden image end to end
#   make test     the whole test suite (unit, real-tool and end-to-end QEMU tests)
# Both install what they need (Debian packages, the venv) on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
LOCK := requirements.lock
APT_PACKAGES := packer qemu-system-x86 qemu-utils mmdebstrap shellcheck cloud-init xorriso \
	cloud-image-utils busybox-static grub-pc-bin grub2-common e2fsprogs fdisk curl systemd \
	docker-registry skopeo runc tinyproxy binutils openssl ovmf qemu-efi-aarch64 dosfstools mtools \
	binutils-aarch64-linux-gnu qemu-user-static qemu-system-arm catatonit openssh-client zsh \
	gcc libc6-dev pkg-config libseccomp-dev libbtrfs-dev file
# (the last line: cgo for upstream's static containerd and runc, built from the Go module proxy; Go itself
# comes with the machine)
export CHECKPOINT_DISABLE := 1

.PHONY: golden test test-fast test-e2e test-arm64 test-extra deps venv lock lint regen-defaults regen-testimage regen-cases docs bench fuzz clean

## golden: the main job on the built-in default spec: base image, bake, verify, print the report
golden: venv
	$(PY) -m devtools golden --work $(BUILD)/golden

## test: everything CI runs but the arm64 tests (their own job: make test-arm64) and the extra boots (make test-extra):
## the fast tests and the boots as two pytest processes side by side, a first run's builds beside them (devtools/testrun.py)
test: venv
	$(PY) -m devtools test

## test-fast: unit and real-tool tests, no QEMU boots (about eight minutes on 2 cores, the upstream builds cached)
test-fast: venv
	$(PY) -m pytest -m "not e2e and not arm64 and not extra" -q

## test-e2e: only the end-to-end QEMU / Packer tests (amd64; the arm64 ones: make test-arm64)
test-e2e: venv
	$(PY) -m pytest -m "e2e and not arm64 and not extra" -v --timeout=3600

## test-arm64: only the arm64 (Graviton) end-to-end tests: a separate CI job (see docs/contributing.md)
test-arm64: venv
	$(PY) -m pytest -m arm64 -v --timeout=7200

## test-extra: the end-to-end boots beyond make test's budget (Debian 13: the golden's EC2 verify, containerd 2.4
## baked under OVMF; Debian 12: the golden's NoCloud and SeaBIOS verifies, two verifies at once, a bake with a wrong
## checksum, the check on boot of a user-data install)
test-extra: venv
	$(PY) -m pytest -m extra -v --timeout=3600

## lint: ruff and mypy as configured in pyproject.toml (tests/test_lint.py runs both in `make test`)
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## deps: the Debian packages (installed only when one is missing)
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

## venv: the virtualenv with imagebuild (editable) and exactly the releases of requirements.lock
## (hash-checked); made anew whenever the lock or pyproject.toml changes
venv: deps $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --require-hashes -r $(LOCK)
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

## lock: re-resolve requirements.lock to the newest releases pyproject.toml allows, rebuild the venv
## from it and run the byte-for-byte tests (golden cases, oldest and newest output libraries) against it
lock: venv
	$(VENV)/bin/pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --generate-hashes --upgrade --quiet \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--custom-compile-command "make lock" -o $(LOCK).new
	@if cmp -s $(LOCK).new $(LOCK); then rm $(LOCK).new; echo "$(LOCK): unchanged"; \
	else mv $(LOCK).new $(LOCK); git --no-pager diff --stat -- $(LOCK); fi
	$(MAKE) venv
	$(PY) -m pytest tests/test_cases.py tests/test_dependency_range.py -q

## regen-defaults: re-read `containerd config default` of every family from upstream's builds (defaults/upstream/, tarball
## installs) and, for the families Debian packages (1.6, 1.7, 2.1), Debian's (defaults/debian/, package installs)
regen-defaults: venv
	$(PY) -m devtools defaults

## regen-testimage: re-assemble verify's test image programs (imagebuild/verify/testimage/<arch>.s -> <arch>.bin,
## amd64 and arm64)
regen-testimage: venv
	$(PY) -m devtools testimage

## regen-cases: rewrite the expected files of tests/cases/* and print the diff to review
## (user-data is gzipped: its text, expected/user-data.txt, shows the change)
regen-cases: venv
	$(PY) -m tests.cases regen
	@git --no-pager diff --stat -- tests/cases/*/expected
	@git --no-pager diff -- tests/cases/*/expected
	@git status --short --untracked-files=all -- tests/cases/*/expected

## docs: rewrite docs/spec.md, the spec reference, from the model (tests/test_docs.py fails when it is stale)
docs: venv
	$(PY) -m devtools spec-reference

## fuzz: the property tests with ~300 random specs per property (failures replay first next time)
fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_properties.py -q

## bench: performance figures, side by side (amd64, and arm64 beside it when its base image is cached);
## options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--arch amd64" or BENCH_ARGS=--quick; every row is
## appended, dated, to docs/benchmarks-history.csv (docs/benchmarks.md holds the latest full table)
bench: venv
	$(PY) -m tests.bench --history docs/benchmarks-history.csv $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) output .pytest_cache .mypy_cache .ruff_cache
