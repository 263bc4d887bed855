#!/usr/bin/env bash
# The test suite (README's second command; .ci/run calls it). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow tier, `-k dpo` for a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
