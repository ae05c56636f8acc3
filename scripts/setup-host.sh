#!/usr/bin/env bash
# Prepares a Debian host to run containerized-agent and its tests: installs the Docker engine and
# debootstrap, starts dockerd if nothing answers on the socket, and builds the agent image
# (offline, from a Debian root filesystem) if it is missing. Idempotent; needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${AGENT_IMAGE:-containerized-agent:latest}"
packages=(docker.io debootstrap nginx-light wrk python3)

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
