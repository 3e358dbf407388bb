#!/usr/bin/env bash
# Debian's shellcheck for `make test` (which then checks every script under scripts/). Idempotent:
# nothing happens when shellcheck is on PATH.
set -euo pipefail
# The folder of this script, without dirname: the skip path must work on a bare PATH.
case "${BASH_SOURCE[0]}" in */*) here=${BASH_SOURCE[0]%/*} ;; *) here=. ;; esac
# shellcheck source=lib/apt-install.sh
source "$here/lib/apt-install.sh"

if command -v shellcheck >/dev/null 2>&1; then
    exit 0
fi
apt_install install-shellcheck shellcheck
shellcheck --version
