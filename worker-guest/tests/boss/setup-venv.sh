#!/bin/sh
# Create (once) a virtualenv with the real buildman boss, buildman 0.2.0
# from PyPI, for the real-boss tests and the benchmark.
# Usage: setup-venv.sh VENV_DIR
#
# The virtualenv is made from Debian's own python3 (/usr/bin/python3) with
# its system site packages visible: the boss puts the virtualenv's bin/
# first on PATH for every build it runs (locally and, through the fake ssh,
# on the workers), and real U-Boot builds run `python3` scripts (binman)
# that need Debian's python3-pyelftools and python3-setuptools. A pyenv or
# other Python without them would break those builds.
set -eu
venv=$1
python=/usr/bin/python3
if [ -x "$venv/bin/buildman" ] && "$venv/bin/python3" -c 'import buildman, elftools' 2>/dev/null; then
    exit 0
fi
if ! "$python" -c 'import venv, ensurepip, elftools' 2>/dev/null; then
    echo "setup-venv.sh: $python needs the venv/ensurepip modules and pyelftools" \
         "(Debian packages python3-venv python3-pyelftools)" >&2
    exit 1
fi
rm -rf "$venv"
"$python" -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check buildman==0.2.0
