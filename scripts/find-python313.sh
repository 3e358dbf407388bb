#!/usr/bin/env bash
# Prints the path of a Python 3.13 interpreter for the worker tier (tests_worker/, `make test-worker`),
# or fails naming where it looked. Azure runs kvlink on 3.13, so the tier wants exactly 3.13.
# Looks at, in order: $PYTHON313, python3.13 on PATH (a pyenv shim counts only if it runs), pyenv's installs.
set -euo pipefail

candidates=()
if [[ -n "${PYTHON313:-}" ]]; then
  candidates+=("$PYTHON313")
fi
if command -v python3.13 >/dev/null 2>&1; then
  candidates+=("$(command -v python3.13)")
fi
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
for bin in "$pyenv_root"/versions/3.13*/bin; do
  if [[ -x "$bin/python3" ]]; then
    candidates+=("$bin/python3")
  fi
done

for python in "${candidates[@]}"; do
  if "$python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 13) else 1)' >/dev/null 2>&1; then
    echo "$python"
    exit 0
  fi
done

echo "find-python313: no working Python 3.13 (looked at \$PYTHON313, python3.13 on PATH, $pyenv_root/versions/3.13*)." >&2
echo "The worker tier needs it: install one (e.g. 'pyenv install 3.13') or set PYTHON313=/path/to/python3.13." >&2
exit 1
