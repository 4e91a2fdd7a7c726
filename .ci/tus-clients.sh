#!/usr/bin/env bash
# Installs the real tus clients the tus tests drive (tests/tus.rs): tuspy (PyPI) in a venv and
# tus-js-client (npm), both under $HOME/.cache, each skipped when already present. The tests
# find them there (or at VAULTFS_TUS_PYTHON / VAULTFS_TUS_NODE_MODULES).
set -euo pipefail

VENV="$HOME/.cache/vaultfs-venv-tus"
NODE_DIR="$HOME/.cache/vaultfs-node-tus"
TUSPY_VERSION="1.1.0"
TUS_JS_VERSION="4.3.1"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import tusclient' 2>/dev/null; then
    echo "== tuspy: present in $VENV"
else
    echo "== tuspy: installing into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "tuspy==$TUSPY_VERSION"
fi

if [ -f "$NODE_DIR/node_modules/tus-js-client/package.json" ]; then
    echo "== tus-js-client: present in $NODE_DIR"
else
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo "== tus-js-client: node/npm missing; installing Debian's nodejs and npm"
        apt-get update -qq && apt-get install -y -qq nodejs npm
    fi
    echo "== tus-js-client: installing into $NODE_DIR (node $(node --version))"
    mkdir -p "$NODE_DIR"
    (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --prefix . "tus-js-client@$TUS_JS_VERSION")
fi
