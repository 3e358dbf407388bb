#!/usr/bin/env bash
# Debian's Chromium for tests/test_report_browser.py (`make test` runs this first). Idempotent:
# nothing happens when /usr/bin/chromium is there. Only Debian's package is used -- a test tool's
# own browser download is not available everywhere kvlink's CI runs.
set -euo pipefail

# Checked first, so a machine without apt-get (or root) can still run `make test`: the browser
# test then skips too (tests/test_report_browser.py reads the same variable).
if [ "${KVLINK_SKIP_BROWSER:-}" = "1" ]; then
    echo "install-chromium: KVLINK_SKIP_BROWSER=1: not installing Chromium; the browser test will be skipped" >&2
    exit 0
fi
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: /usr/bin/chromium is missing and this is not a Debian/Ubuntu system;" >&2
    echo "install Chromium yourself, or set KVLINK_SKIP_BROWSER=1 to skip the browser test" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-chromium: installing Chromium needs root (or sudo): apt-get install chromium;" >&2
    echo "or set KVLINK_SKIP_BROWSER=1 to skip the browser test" >&2
    exit 1
fi
echo "install-chromium: installing Debian's chromium package"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium
/usr/bin/chromium --version
