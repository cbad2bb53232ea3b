#!/usr/bin/env bash
# Lints proto/ with buf (installed from the npm registry as @bufbuild/buf into a tools cache).
set -euo pipefail
cd "$(dirname "$0")/.."
BUF_VERSION="1.75.0"
TOOLS="${LEDGER_TOOLS_DIR:-${CARGO_TARGET_DIR:-target}/tools}"
BUF="$TOOLS/node_modules/.bin/buf"
if [ ! -x "$BUF" ] || ! "$BUF" --version 2>/dev/null | grep -qx "$BUF_VERSION"; then
  command -v npm >/dev/null 2>&1 || { echo "buf-lint: npm is needed to install buf" >&2; exit 1; }
  mkdir -p "$TOOLS"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS" "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
"$BUF" lint proto
echo "buf lint: proto/ passes"
