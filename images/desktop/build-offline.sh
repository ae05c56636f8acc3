#!/usr/bin/env bash
# Builds the desktop image without a container registry, on top of the agent image:
#
#   images/desktop/build-offline.sh [IMAGE] [BASE]
#       IMAGE default: containerized-agent-desktop:latest   BASE default: containerized-agent:latest
#
# The base image's root filesystem is exported, Debian packages (Xvfb, a window manager, x11vnc) are
# installed into it with apt in a chroot, Jupyter Lab and ipykernel are installed from PyPI with pip,
# and the result is imported with `docker import`. The base image stays small for plain jobs.
# Needs root, docker and the base image (images/agent/build-offline.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

image="${1:-${AGENT_DESKTOP_IMAGE:-containerized-agent-desktop:latest}}"
base="${2:-${AGENT_IMAGE:-containerized-agent:latest}}"

# Debian packages on top of the base image (installed without recommends):
#  xvfb            the X server (virtual framebuffer)
#  matchbox-window-manager  a tiny window manager: shows one window at a time, full screen
#  x11vnc          the VNC server, attached to the Xvfb display, bound to 127.0.0.1
#  x11-xserver-utils  xsetroot, xrandr, xset: for steps that set up the screen
#  xterm           a terminal on the desktop
deb_packages=(xvfb matchbox-window-manager x11vnc x11-xserver-utils xterm)
# PyPI packages (Debian has only Notebook 6).
pip_packages=("jupyterlab>=4,<5" "ipykernel>=6")

for tool in docker tar chroot; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' is required" >&2; exit 1; }
done
docker image inspect "$base" >/dev/null 2>&1 \
  || { echo "error: base image $base is missing (images/agent/build-offline.sh builds it)" >&2; exit 1; }

rootfs=$(mktemp -d /tmp/agent-desktop-rootfs.XXXXXX)
container=""
cleanup() {
  for m in dev/pts dev proc; do
    mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m" || true
  done
  [ -n "$container" ] && docker rm -f "$container" >/dev/null 2>&1 || true
  # --one-file-system: never descend into a mount that is still attached (/dev, /proc).
  rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> [1/4] export $base -> $rootfs"
container=$(docker create "$base" true)
docker export "$container" | tar --numeric-owner -C "$rootfs" -x
docker rm -f "$container" >/dev/null
container=""

# A clean environment inside the chroot: nothing of the host's pip/apt settings leaks in.
in_root() {
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=180 chroot "$rootfs" "$@"
}
mount -t proc proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"
mount -t devpts devpts "$rootfs/dev/pts" 2>/dev/null || true
cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
# pip uses the host's CA bundle (it may hold a proxy's CA that the image's bundle lacks).
host_ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
cp -L "$host_ca" "$rootfs/tmp/host-ca.crt"

echo "==> [2/4] apt-get install ${deb_packages[*]}"
in_root apt-get -o APT::Sandbox::User=root update -q | tail -n 2
in_root apt-get -o APT::Sandbox::User=root install -y -q --no-install-recommends "${deb_packages[@]}" \
  | grep -E '^(Setting up|Unpacking)' | awk '{ n++ } END { print "    " n " package steps" }'

echo "==> [3/4] pip install ${pip_packages[*]}"
in_root python3 -m pip install -q --cert /tmp/host-ca.crt --break-system-packages "${pip_packages[@]}"
in_root jupyter lab --version | sed 's/^/    jupyterlab /'

install -m 0755 "$here/agent-desktop" "$rootfs/usr/local/bin/agent-desktop"
# Keep the image small: no apt lists, docs or caches. (Bytecode stays: Jupyter starts seconds
# faster when it need not compile itself on every start, on a read-only root.)
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/root/.cache
: > "$rootfs/etc/resolv.conf"
rm -f "$rootfs/tmp/host-ca.crt"
umount -l "$rootfs/dev/pts" 2>/dev/null || true
umount -l "$rootfs/dev" "$rootfs/proc"

echo "==> [4/4] docker import -> $image"
# The root filesystem is read-only in a sandbox: HOME and the X and Jupyter runtime directories are
# under /tmp, a tmpfs (agent-desktop and the supervisor create them).
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'USER agent' \
  --change 'WORKDIR /workspace' \
  --change 'ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp/home XDG_RUNTIME_DIR=/tmp/runtime JUPYTER_RUNTIME_DIR=/tmp/runtime/jupyter DISPLAY=:0' \
  --change 'LABEL org.opencontainers.image.title=containerized-agent-desktop' \
  --change 'CMD ["/bin/bash"]' \
  - "$image"
docker image inspect "$image" --format "==> built $image ({{.Size}} bytes)"
