#!/usr/bin/env bash
# Set up everything wiseverify needs on a clean Debian machine, then run it.
#
#   scripts/quickstart.sh demo   # build a demo tree, start a local S3 endpoint, verify it
#   scripts/quickstart.sh test   # the whole test suite (as root: also local SLURM daemons)
#
# Idempotent: the virtual environment in .venv is created once and reused.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${WISEVERIFY_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

die() { echo "quickstart: $*" >&2; exit 2; }

command -v "$python" >/dev/null || die "$python not found; install Python >= 3.11"
"$python" - <<'PY' || die "Python >= 3.11 is required"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

apt_install() {
    # only as root and only when something is missing
    [ "$(id -u)" = 0 ] || die "missing system packages ($*) and not root to install them"
    command -v apt-get >/dev/null || die "missing system packages ($*) and no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -f /tmp/.wiseverify-apt-updated ]; then
        apt-get update -qq && touch /tmp/.wiseverify-apt-updated
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

setup_venv() {
    if [ ! -x "$venv/bin/python" ]; then
        if ! "$python" -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            ver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            apt_install "python${ver}-venv" || apt_install python3-venv
            "$python" -m venv "$venv"
        fi
    fi
    # the C loops (setup.py: walk, small-file reads, key sort, MD5 lanes) need a compiler and Python's
    # headers; without them the install still succeeds and each runs its Python path
    if ! command -v cc >/dev/null 2>&1 || ! "$python" - <<'PY'
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
    then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            ver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            apt_install gcc libc6-dev "python${ver}-dev" || apt_install gcc libc6-dev python3-dev \
                || echo "quickstart: no C compiler; the C loops (walk, small-file reads, key sort, MD5 lanes) use their Python paths" >&2
            rm -f "$venv/.wiseverify-installed"
        else
            echo "quickstart: no C compiler or Python headers; the C loops use their Python paths" >&2
        fi
    fi
    stamp="$venv/.wiseverify-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/constraints.txt -nt "$stamp" ] \
            || [ setup.py -nt "$stamp" ] || [ wiseverify/inventory/_fastwalk.c -nt "$stamp" ] \
            || [ wiseverify/core/_fastkeys.c -nt "$stamp" ] || [ wiseverify/core/_md5mb.c -nt "$stamp" ] \
            || [ wiseverify/digest/_smallread.c -nt "$stamp" ]; then
        # exact versions the suite was last run with: reproducible, and no resolver backtracking
        "$venv/bin/python" -m pip install -q --upgrade pip 2>/dev/null
        "$venv/bin/python" -m pip install -q -c scripts/constraints.txt -e ".[demo,test,bench]" 2>&1 \
            | grep -v "^WARNING: Location" || true
        "$venv/bin/python" -c "import wiseverify, moto, awscrt, s3fs, distributed" \
            || die "installing the Python packages failed"
        touch "$stamp"
    fi
}

case "${1:-}" in
    demo)
        shift
        setup_venv
        exec "$venv/bin/wiseverify" demo "$@"
        ;;
    test)
        shift
        setup_venv
        # real SLURM daemons for the SLURM tests; if they cannot start, those tests
        # report why (and fail under CI=true) while the rest of the suite still runs
        if [ "$(id -u)" = 0 ] && [ -x scripts/slurm-local.sh ]; then
            scripts/slurm-local.sh start \
                || echo "quickstart: SLURM did not start; the SLURM tests will say why" >&2
        fi
        # the HTML report is checked in a real headless browser; CI (CI=true) fails without it
        if ! command -v chromium >/dev/null 2>&1; then
            if [ "$(id -u)" = 0 ]; then
                apt_install chromium fonts-dejavu-core
            else
                echo "quickstart: chromium is missing (apt-get install chromium as root);" \
                    "the HTML report test will be skipped" >&2
            fi
        fi
        "$venv/bin/ruff" check .
        "$venv/bin/lint-imports" --no-cache
        "$venv/bin/deptry" .
        exec "$venv/bin/python" -m pytest -q "$@"
        ;;
    *)
        echo "usage: scripts/quickstart.sh demo|test [args]" >&2
        exit 2
        ;;
esac
