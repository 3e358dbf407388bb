# shellcheck shell=bash
# apt_install NAME PACKAGE [HINT]: install Debian's PACKAGE with apt-get, as root or through sudo.
# Sourced by the install-*.sh scripts, which decide first whether the tool is already there.
# HINT is an extra line for the failure messages (e.g. how to skip what needs the tool).
apt_install() {
    local name=$1 package=$2 hint=${3:-}
    local -a sudo=()
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$name: $package is missing and this is not a Debian/Ubuntu system; install it yourself" >&2
        [ -z "$hint" ] || echo "$hint" >&2
        return 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "$name: installing $package needs root (or sudo): apt-get install $package" >&2
            [ -z "$hint" ] || echo "$hint" >&2
            return 1
        fi
        sudo=(sudo)
    fi
    echo "$name: installing Debian's $package package"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$package"
}
