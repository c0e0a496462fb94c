#!/usr/bin/env bash
#SBATCH --job-name=wiseverify
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=1
#SBATCH --mem-per-cpu=2G
#SBATCH --time=08:00:00
#SBATCH --output=wiseverify-%j.out
#
# Verify a POSIX/Lustre tree against S3 inside one SLURM allocation.
#
#   sbatch slurm/verify.sh jobs/<job>.yaml
#   sbatch slurm/verify.sh --job jobs/<job>.yaml [options that override the job file]
#   sbatch slurm/verify.sh SOURCE DEST --out RUN_DIR [wiseverify verify options]
#
# Every #SBATCH default above can be overridden on the command line, e.g. for
# 16 workers of 8 cores:  sbatch --ntasks=18 --cpus-per-task=8 slurm/verify.sh jobs/x.yaml
#
# Task 0 runs the Dask scheduler, task 1 drives the verification, all other
# tasks are Dask workers with --cpus-per-task threads each (at least 3 tasks).
# RUN_DIR (or the job file's out_root) must be on storage every node can reach.
#
# Python: $WISEVERIFY_PYTHON if set, else the activated virtual environment
# ($VIRTUAL_ENV) or conda environment ($CONDA_PREFIX), else the .venv of the
# repository this script belongs to.
#
# S3 credentials come from the AWS chain of the submitting shell (environment,
# AWS_PROFILE, instance role); sbatch passes the environment to the job, so
# nothing secret is written into this script, the job file or the output file.
#
# Exit code (also the job's exit code): 0 every key MATCH or SKIPPED,
# 1 discrepancies found, 2 usage or configuration error, 3 the run failed.
set -euo pipefail

die() {
    echo "wiseverify: error: $*" >&2
    exit 2
}

[ -n "${SLURM_JOB_ID:-}" ] || die "submit this script with sbatch: sbatch slurm/verify.sh jobs/<job>.yaml"
[ "$#" -ge 1 ] || die "usage: sbatch slurm/verify.sh jobs/<job>.yaml | SOURCE DEST --out RUN_DIR [options]"

# Where this script lives: sbatch runs a spooled copy, so ask SLURM for the
# submitted path; scrontab and direct runs execute the file itself.
script_dir() {
    local cmd
    cmd="$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'Command=[^ ]*' | cut -d= -f2- || true)"
    if [ -n "$cmd" ] && [ -f "$cmd" ]; then
        dirname "$(readlink -f "$cmd")"
    elif [ -f "${BASH_SOURCE[0]}" ] && [[ "${BASH_SOURCE[0]}" != */slurm_script ]]; then
        dirname "$(readlink -f "${BASH_SOURCE[0]}")"
    elif [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ -f "$SLURM_SUBMIT_DIR/slurm/verify.sh" ]; then
        echo "$SLURM_SUBMIT_DIR/slurm"
    fi
}

find_python() {
    local repo
    if [ -n "${WISEVERIFY_PYTHON:-}" ]; then
        echo "$WISEVERIFY_PYTHON"
        return
    fi
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        echo "$VIRTUAL_ENV/bin/python"
        return
    fi
    if [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
        echo "$CONDA_PREFIX/bin/python"
        return
    fi
    repo="$(script_dir)"
    if [ -n "$repo" ] && [ -x "$repo/../.venv/bin/python" ]; then
        # not readlink -f: a venv's python is a symlink to the base interpreter
        echo "$(cd "$repo/.." && pwd)/.venv/bin/python"
        return
    fi
    command -v python3 || true
}

py="$(find_python)"
[ -n "$py" ] || die "no Python found: activate the wiseverify environment or set WISEVERIFY_PYTHON"
"$py" -c 'import wiseverify.slurm' 2>/dev/null \
    || die "$py cannot import wiseverify: activate its environment, set WISEVERIFY_PYTHON, or run scripts/quickstart.sh once"
[ "${SLURM_NTASKS:-1}" -ge 3 ] \
    || die "$SLURM_NTASKS task(s): need at least 3 (scheduler, driver, one worker); use sbatch --ntasks=N"

# One timestamp for every task, so a job file's out_root gets one dated run directory.
export WISEVERIFY_RUN_STAMP="${WISEVERIFY_RUN_STAMP:-$(date -u +%Y%m%dT%H%M%SZ)}"
export PYTHONUNBUFFERED=1

echo "wiseverify: job $SLURM_JOB_ID: $SLURM_NTASKS tasks x ${SLURM_CPUS_PER_TASK:-1} CPU on ${SLURM_JOB_NODELIST:-?}; python $py"
echo "wiseverify: arguments: $*"

# srun does not always inherit --cpus-per-task from sbatch (SLURM 22.05), so pass it.
set +e
srun --ntasks="$SLURM_NTASKS" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
    "$py" -m wiseverify.slurm "$@"
rc=$?
set -e
case "$rc" in
    0) echo "wiseverify: finished: every key MATCH or SKIPPED" ;;
    1) echo "wiseverify: finished: discrepancies found (exit 1)" ;;
    2) echo "wiseverify: usage or configuration error (exit 2)" ;;
    *) echo "wiseverify: the run failed (exit $rc)" ;;
esac
exit "$rc"
