#!/usr/bin/env bash
# The main job: set up, then an encrypted decision tree on breast cancer data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m veilml.cli.demo "$@"
