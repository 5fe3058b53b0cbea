# The two set-up commands of the README. Both run one idempotent bootstrap first.
PYTHON ?= python3
DEMO_DIR ?= demo
# the one-host cluster of slurm/up; a real site's SLURM_CONF (if set) wins
export SLURM_CONF ?= $(CURDIR)/.slurm/slurm.conf
SLURM_UP ?= slurm/up
SLURM_DOWN ?= slurm/down
PYTEST ?= $(PYTHON) -m pytest

.PHONY: bootstrap demo test

bootstrap:
	@PYTHON=$(PYTHON) scripts/bootstrap

demo: bootstrap
	$(PYTHON) -m hpc.demo --out $(DEMO_DIR)

# On CI (CI=true) a cluster that does not start fails the run; elsewhere its tests are skipped, and pytest's
# summary says how many.
test: bootstrap
	@if ! $(SLURM_UP); then \
		if [ "$$CI" = true ]; then \
			echo "make test: one-host Slurm did not start, and on CI (CI=true) its tests must run" >&2; exit 1; \
		fi; \
		echo "make test: one-host Slurm did not start; Slurm tests will be skipped"; \
	fi
	@$(PYTEST); rc=$$?; $(SLURM_DOWN) || true; exit $$rc
