#!/usr/bin/env bash
# Stages the application into the package root $1 (called by debian/rules from the source tree):
#   /usr/lib/trivisor      the checkout's runtime files (no tests, benchmarks or docs), its
#                          production npm packages, and node/bin/node: the Node.js 24 the build
#                          runs on, as the npm registry ships it (setup/start installs the same)
#   /usr/bin/trivisor      the CLI, on that Node.js
#   /usr/sbin/trivisor-guest-kernel   unpacks the vm guests' kernel, as setup/start does
#   man pages and bash, zsh and fish completion, generated from the CLI's own definitions
# The bundles (decision 0013) are made by the postinst, in place: they record absolute paths.
set -euo pipefail
root=$1
app=$root/usr/lib/trivisor
rm -rf "$app" && mkdir -p "$app/src" "$app/web" "$app/setup"

cp -a bin package.json package-lock.json tsconfig.json "$app/"
tar -C src --exclude='*.test.ts' -cf - . | tar -C "$app/src" -xf -
tar -C web --exclude=./dist -cf - . | tar -C "$app/web" -xf -
cp setup/common.sh "$app/setup/"

# A Node.js >= 24 that is the registry's build (one binary, no libnode): what runs the daemon.
node=$(readlink -f "${TRIVISOR_NODE:-/opt/trivisor-node/bin/node}")
major=$("$node" -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 24 ] || ldd "$node" | grep -q libnode; then
  echo "Error: $node is not a stand-alone Node.js 24 or newer: run setup/test (it installs one into /opt/trivisor-node)" >&2
  exit 1
fi
mkdir -p "$app/node/bin"
cp "$node" "$app/node/bin/node"
for f in LICENSE README.md; do [ -f "$(dirname "$(dirname "$node")")/$f" ] && cp "$(dirname "$(dirname "$node")")/$f" "$app/node/"; done

# Production npm packages, from npm's cache when it has them (CI binds the host's in). setup puts
# npm beside the link it makes (/opt/trivisor-node/bin), not beside the binary the link names.
export PATH="$(dirname "$node"):$(dirname "${TRIVISOR_NODE:-/opt/trivisor-node/bin/node}"):$PATH"
(cd "$app" && NODE_OPTIONS="--use-system-ca${NODE_OPTIONS:+ $NODE_OPTIONS}" npm install --omit=dev --no-audit --no-fund \
  --no-save --prefer-offline --loglevel=error --fetch-retries=1 >/dev/null)
rm -f "$app/node_modules/.package-lock.json"

mkdir -p "$root/usr/bin" "$root/usr/sbin"
cat >"$root/usr/bin/trivisor" <<'SH'
#!/bin/sh
# The Trivisor CLI (and daemon) of the Debian package, on the package's own Node.js.
TRIVISOR_NODE=/usr/lib/trivisor/node/bin/node exec /usr/lib/trivisor/bin/trivisor "$@"
SH
cat >"$root/usr/sbin/trivisor-guest-kernel" <<'SH'
#!/bin/bash
# Unpacks Debian's cloud kernel for vm guests that boot an image (not their own disk) into
# /opt/trivisor/guest-kernel, as setup/start does; the host's own boot menu stays as it is.
source /usr/lib/trivisor/setup/common.sh
need_root
ensure_guest_kernel
SH
chmod 755 "$root/usr/bin/trivisor" "$root/usr/sbin/trivisor-guest-kernel"

run() { "$app/node/bin/node" "$@"; }
run "$app/src/cli/man-pages.ts" "$root/usr/share/man/man1" >/dev/null
mkdir -p "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
run "$app/src/cli/main.ts" completion bash >"$root/usr/share/bash-completion/completions/trivisor"
run "$app/src/cli/main.ts" completion zsh >"$root/usr/share/zsh/vendor-completions/_trivisor"
run "$app/src/cli/main.ts" completion fish >"$root/usr/share/fish/vendor_completions.d/trivisor.fish"
