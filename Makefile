# The two set-up commands of the README. Both run one idempotent bootstrap first.
PYTHON ?= python3
DEMO_DIR ?= demo
# the one-host cluster of slurm/up; a real site's SLURM_CONF (if set) wins
export SLURM_CONF ?= $(CURDIR)/.slurm/slurm.conf

.PHONY: bootstrap demo test

bootstrap:
	@PYTHON=$(PYTHON) scripts/bootstrap

demo: bootstrap
	$(PYTHON) -m hpc.demo --out $(DEMO_DIR)

test: bootstrap
	@slurm/up || echo "make test: one-host Slurm did not start; Slurm tests will be skipped"
	@$(PYTHON) -m pytest; rc=$$?; slurm/down || true; exit $$rc
