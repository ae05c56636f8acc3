#!/usr/bin/env bash
# Prepares a Debian host to run containerized-agent and its tests: installs the Docker engine,
# debootstrap and Chromium (the dashboard's browser tests), starts dockerd if nothing answers on the
# socket, builds the agent image (offline, from a Debian root filesystem) and the desktop image on
# top of it (Xvfb, VNC, Jupyter Lab) if they are missing, and installs the browser tests' npm
# packages (playwright-core) from the npm registry. Idempotent; needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${AGENT_IMAGE:-containerized-agent:latest}"
desktop_image="${AGENT_DESKTOP_IMAGE:-containerized-agent-desktop:latest}"
packages=(docker.io debootstrap nginx-light wrk python3 chromium)
# Node.js for the browser tests: Debian's, unless a node is installed already.
command -v node >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  (nohup dockerd >/tmp/dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -n 30 /tmp/dockerd.log; exit 1; }
fi
docker version --format 'docker engine {{.Server.Version}} (API {{.Server.APIVersion}})'

if ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "building $image (offline, debootstrap + docker import)"
  images/agent/build-offline.sh "$image"
fi
docker image inspect "$image" --format "image $image: {{.Id}}"

# The dashboard's browser tests (agent-server/tests/dashboard_e2e.rs) drive Debian's chromium with
# playwright-core, pinned by agent-server/ui-tests/package-lock.json.
ui_tests=agent-server/ui-tests
if [ ! -d "$ui_tests/node_modules/playwright-core" ]; then
  echo "installing the browser tests' npm packages"
  (cd "$ui_tests" && npm ci --no-audit --no-fund)
fi
echo "browser tests: $(chromium --version 2>/dev/null | head -n 1), node $(node --version)"

if ! docker image inspect "$desktop_image" >/dev/null 2>&1; then
  echo "building $desktop_image (offline, on $image: Xvfb, x11vnc, Jupyter Lab)"
  images/desktop/build-offline.sh "$desktop_image" "$image"
fi
docker image inspect "$desktop_image" --format "image $desktop_image: {{.Id}} ({{.Size}} bytes)"

# The LiteLLM proxy for the LLM compatibility tests.
scripts/setup-litellm.sh
# moto's S3 server and schemathesis for the artifact-store and OpenAPI tests.
scripts/setup-test-tools.sh
