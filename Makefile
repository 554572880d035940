# Two commands for a new user:
#   make demo   set up everything, then run the main job on the embedded default
#   make test   set up everything, then run the linter and the test suite
# and, for the papers' claims in the scene world (about four hours on two CPU cores, resumable):
#   make experiments   the runs behind the README's results, then runs/experiments/report.md
# Set-up creates .venv once; later runs reuse it (re-installed when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.mmalign-installed

.PHONY: demo test setup experiments

demo: $(STAMP)
	$(BIN)/mmalign selftest
	$(BIN)/mmalign demo --out runs/demo

EXP = $(BIN)/mmalign experiments

experiments: $(STAMP)
	$(EXP) dpo --out runs/experiments --seeds 0 1 2
	$(EXP) dpo --out runs/experiments --seeds 3 4 --methods ddpo-qlora dpo-qlora
	$(EXP) reward-models --out runs/experiments --seeds 0 1 2
	$(EXP) ppo --out runs/experiments --seeds 0 1 2 3 4
	$(EXP) grpo --out runs/experiments --seeds 0 1 2
	$(EXP) mdpo --out runs/experiments --seeds 0 1 2
	$(EXP) loop --out runs/experiments --seeds 0 1 2
	$(EXP) overoptimisation --out runs/experiments --seeds 0 1 2
	$(EXP) report --out runs/experiments

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)
