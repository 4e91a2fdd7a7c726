#!/usr/bin/env bash
# Installs what the browser suite (tests/webui.rs, tests/webui/suite.mjs) drives: Debian's
# chromium (never a browser downloaded by Playwright) and playwright-core from npm under
# $HOME/.cache/vaultfs-node-web. Each is skipped when already present. The test finds them at
# /usr/bin/chromium (or VAULTFS_CHROMIUM) and there (or VAULTFS_PLAYWRIGHT).
set -euo pipefail

NODE_DIR="$HOME/.cache/vaultfs-node-web"
PLAYWRIGHT_VERSION="1.65.1"

if [ -x /usr/bin/chromium ]; then
    echo "== chromium: present ($(/usr/bin/chromium --version 2>/dev/null || echo unknown))"
else
    echo "== chromium: installing Debian's package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

if [ "$(node -p 'require(process.argv[1]).version' "$NODE_DIR/node_modules/playwright-core/package.json" 2>/dev/null)" = "$PLAYWRIGHT_VERSION" ]; then
    echo "== playwright-core $PLAYWRIGHT_VERSION: present in $NODE_DIR"
else
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo "== node/npm missing; installing Debian's nodejs and npm"
        apt-get update -qq && apt-get install -y -qq nodejs npm
    fi
    echo "== playwright-core $PLAYWRIGHT_VERSION: installing into $NODE_DIR (no browser download)"
    mkdir -p "$NODE_DIR"
    (cd "$NODE_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund \
        --prefix . "playwright-core@$PLAYWRIGHT_VERSION")
fi
