#!/usr/bin/env bash
# Set up with the test extras, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# lint and format check first: a failure names the file and the rule (fix with: .venv/bin/ruff format . ; .venv/bin/ruff check --fix .)
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
# every tier (fast, execute, notebook, all_families); a plain `.venv/bin/python -m pytest` runs the fast tier only
export VEILML_ALL_TIERS=1
exec .venv/bin/python -m pytest "$@"
