#!/bin/sh
# Create (once) a virtualenv with the real buildman boss, buildman 0.2.0
# from PyPI, for the real-boss test and the benchmark.
# Usage: setup-venv.sh VENV_DIR
set -eu
venv=$1
if [ -x "$venv/bin/buildman" ] && "$venv/bin/python3" -c 'import buildman' 2>/dev/null; then
    exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check buildman==0.2.0
