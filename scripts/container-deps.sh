#!/usr/bin/env bash
# What test/container.test.ts needs to build and run the image where there is no Docker
# engine: Debian's podman (buildah comes with it), runc and debootstrap (for the local
# stand-in of node:24-bookworm-slim), and the podman settings these machines need
# (../shared/reference/containers-here.md). Root with apt-get only, as on CI; elsewhere it
# does nothing and the container test says why it does not run.
set -euo pipefail
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || exit 0
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
# podman's default nofile (1048576) is above the hard limit here and setrlimit is not
# permitted; crun refuses the hybrid cgroup layout, runc with cgroupfs does not.
mkdir -p /etc/containers
conf=/etc/containers/containers.conf
want='# Written by hygiene-relay scripts/container-deps.sh.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"'
if [ ! -f "$conf" ] || ! grep -q 'hygiene-relay scripts/container-deps.sh' "$conf"; then
  [ -f "$conf" ] && [ -s "$conf" ] && { echo "container-deps: $conf exists and is not ours: leaving it; add the settings in scripts/container-deps.sh to it" >&2; exit 0; }
  printf '%s\n' "$want" > "$conf"
fi
