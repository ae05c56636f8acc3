#!/usr/bin/env bash
# Installs the LiteLLM proxy (PyPI `litellm[proxy]`, pinned) into its own virtualenv for the LLM
# compatibility tests (agent-server/tests/litellm_compat.rs). Idempotent (see setup-pyvenv.sh).
# The venv lives outside the repository (about 750 MB; the first install takes a few minutes).
#
#   LITELLM_VENV   where to put it (default /opt/containerized-agent/litellm-venv); the tests read
#                  the same variable.
set -euo pipefail
venv="${LITELLM_VENV:-/opt/containerized-agent/litellm-venv}"
if [ -x "$venv/bin/litellm" ] && [ ! -f "$venv/.requirements" ]; then
  # A venv from before setup-pyvenv.sh: keep it if it has the pinned version.
  if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null)" = "1.108.5" ]; then
    echo "litellm[proxy]==1.108.5" >"$venv/.requirements"
  fi
fi
exec "$(dirname "$0")/setup-pyvenv.sh" "$venv" "litellm[proxy]==1.108.5"
