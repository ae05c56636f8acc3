#!/usr/bin/env bash
# Installs pinned PyPI packages into a virtualenv of their own, for tests that run a real Python
# tool on 127.0.0.1 (the LiteLLM proxy, moto's S3 server, schemathesis). Idempotent: does nothing
# when the venv already holds exactly these requirements (recorded in <venv>/.requirements); later
# installs come from pip's cache.
#
#   scripts/setup-pyvenv.sh VENV REQUIREMENT...     e.g. /opt/x/venv 'moto[server]==5.2.5'
set -euo pipefail

venv="$1"
shift
wanted="$(printf '%s\n' "$@")"
stamp="$venv/.requirements"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "$venv: $(echo "$wanted" | tr '\n' ' ')"
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

echo "installing $(echo "$wanted" | tr '\n' ' ')into $venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$@"
echo "$wanted" >"$stamp"
echo "$venv: $(echo "$wanted" | tr '\n' ' ')"
