#!/usr/bin/env bash
# Debian's Chromium for tests/test_report_browser.py (`make test` runs this first). Idempotent:
# nothing happens when /usr/bin/chromium is there. Only Debian's package is used -- a test tool's
# own browser download is not available everywhere kvlink's CI runs.
set -euo pipefail
# The folder of this script, without dirname: the skip path must work on a bare PATH.
case "${BASH_SOURCE[0]}" in */*) here=${BASH_SOURCE[0]%/*} ;; *) here=. ;; esac
# shellcheck source=lib/apt-install.sh
source "$here/lib/apt-install.sh"

# Checked first, so a machine without apt-get (or root) can still run `make test`: the browser
# test then skips too (tests/test_report_browser.py reads the same variable).
if [ "${KVLINK_SKIP_BROWSER:-}" = "1" ]; then
    echo "install-chromium: KVLINK_SKIP_BROWSER=1: not installing Chromium; the browser test will be skipped" >&2
    exit 0
fi
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
apt_install install-chromium chromium "or set KVLINK_SKIP_BROWSER=1 to skip the browser test"
/usr/bin/chromium --version
