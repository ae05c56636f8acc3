#!/usr/bin/env bash
# Installs the LiteLLM proxy (PyPI `litellm[proxy]`, pinned) into its own virtualenv for the LLM
# compatibility tests (agent-server/tests/litellm_compat.rs). Idempotent: does nothing when the
# pinned version is already there. The venv lives outside the repository (about 750 MB; the first
# install takes a few minutes, later ones come from pip's cache).
#
#   LITELLM_VENV   where to put it (default /opt/containerized-agent/litellm-venv); the tests read
#                  the same variable.
set -euo pipefail

version="1.108.5"
venv="${LITELLM_VENV:-/opt/containerized-agent/litellm-venv}"

installed() {
  [ -x "$venv/bin/litellm" ] &&
    [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null)" = "$version" ]
}

if installed; then
  echo "litellm $version: $venv"
  exit 0
fi

python=""
for p in python3.12 python3.11 python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
    python="$p"
    break
  fi
done
if [ -z "$python" ] || ! "$python" -m venv --help >/dev/null 2>&1; then
  echo "installing python3 and python3-venv"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-venv
  python=python3
fi

echo "installing litellm[proxy]==$version into $venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$version"
installed || { echo "litellm $version did not install into $venv"; exit 1; }
echo "litellm $version: $venv"
