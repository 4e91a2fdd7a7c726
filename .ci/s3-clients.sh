#!/usr/bin/env bash
# Installs the S3 clients the S3 API tests drive (tests/s3.rs):
# awscli, boto3, s3cmd and minio from PyPI into a virtualenv at $HOME/.cache/vaultfs-venv
# (skipped when present), and rclone from Debian's packages (only when missing).
set -euo pipefail

VENV="${VAULTFS_S3_VENV:-$HOME/.cache/vaultfs-venv}"
if [ ! -x "$VENV/bin/aws" ] || ! "$VENV/bin/python" -c 'import boto3, minio' 2>/dev/null \
    || [ ! -x "$VENV/bin/s3cmd" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet awscli boto3 s3cmd minio
fi
echo "python clients: $("$VENV/bin/aws" --version 2>&1)"

if ! command -v rclone >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rclone >/dev/null
fi
echo "rclone: $(rclone version | head -1)"
