#!/usr/bin/env bash
# The main job on a fresh machine: environment, default model, local Prefect server, served deployments,
# then `prefect deployment run sft-to-dpo/sft-to-dpo` on the shipped sample data, and a summary.
# A second run reuses everything that exists (environment, model cache, server, stage caches).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
echo "quickstart: default model -> $(alignment model fetch smollm2-135m-instruct 2>/dev/null | tail -n 1)"
alignment serve --recipe sft-to-dpo
t1=$(date +%s)
out=$(prefect --no-prompt deployment run sft-to-dpo/sft-to-dpo)
echo "$out" | grep -v "Parameters:"
run_id=$(echo "$out" | sed -n 's/.*UUID: \([0-9a-f-]*\).*/\1/p')
alignment wait "$run_id" || { alignment summary "$run_id"; exit 1; }
t2=$(date +%s)
alignment summary "$run_id"
echo
echo "quickstart: setup $((t1 - t0)) s, main job $((t2 - t1)) s (wall time)."
echo "Server and deployments keep running in the background: 'alignment status', 'alignment stop'."
