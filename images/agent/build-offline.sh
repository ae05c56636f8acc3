#!/usr/bin/env bash
# Builds the agent image without a container registry: a Debian root filesystem made with
# debootstrap, imported with `docker import`. Used on machines (and CI) that cannot pull `debian:*`.
#
#   images/agent/build-offline.sh [IMAGE]      (default: containerized-agent:latest)
#
# Env: DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (the first mirror in /etc/apt), AGENT_UID (1000).
set -euo pipefail

image="${1:-${AGENT_IMAGE:-containerized-agent:latest}}"
suite="${DEBIAN_SUITE:-bookworm}"
uid="${AGENT_UID:-1000}"
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -v security | head -n1 | awk '{print $2}') || true
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

for tool in debootstrap docker tar; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' is required (apt-get install -y debootstrap docker.io)" >&2; exit 1; }
done

packages=bash,coreutils,python3,python3-pip,python3-venv,git,curl,ca-certificates,tini,procps
rootfs=$(mktemp -d /tmp/agent-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "==> [1/3] debootstrap $suite ($mirror) -> $rootfs"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
  | sed -u 's/^/    /' | grep --line-buffered -E '^    I: (Retrieving|Validating|Extracting|Installing|Configuring|Base system)' \
  | awk '{ n++; if (n % 25 == 0 || /Base system/) print; fflush() }' || true
[ -x "$rootfs/usr/bin/python3" ] || { echo "error: debootstrap did not produce python3" >&2; exit 1; }

echo "==> [2/3] configure: non-root user 'agent' (uid $uid), /workspace"
chroot "$rootfs" /usr/sbin/groupadd --gid "$uid" agent
chroot "$rootfs" /usr/sbin/useradd --uid "$uid" --gid "$uid" --create-home --shell /bin/bash agent
mkdir -p "$rootfs/workspace"
chown "$uid:$uid" "$rootfs/workspace"
# Keep the image small: no apt lists, docs or caches.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log

echo "==> [3/3] docker import -> $image"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'USER agent' \
  --change 'WORKDIR /workspace' \
  --change 'ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/home/agent' \
  --change 'LABEL org.opencontainers.image.title=containerized-agent' \
  --change 'CMD ["/bin/bash"]' \
  - "$image"
echo "==> built $image"
