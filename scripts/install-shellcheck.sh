#!/usr/bin/env bash
# Debian's shellcheck for `make test` (which then checks every script under scripts/). Idempotent:
# nothing happens when shellcheck is on PATH. Same shape as scripts/install-chromium.sh.
set -euo pipefail

if command -v shellcheck >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-shellcheck: shellcheck is missing and this is not a Debian/Ubuntu system;" >&2
    echo "install it yourself (https://github.com/koalaman/shellcheck#installing)" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-shellcheck: installing shellcheck needs root (or sudo): apt-get install shellcheck" >&2
    exit 1
fi
echo "install-shellcheck: installing Debian's shellcheck package"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends shellcheck
shellcheck --version
