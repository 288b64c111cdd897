#!/usr/bin/env bash
# Command 2: install what is needed, then run every chapter under nbval (lax) and the unit tests
# in one pytest session — chapters first, so that tests/test_results_reproduce.py can compare the
# numbers this run produced with the numbers committed in the notebooks — then every chapter in the
# paper profile at smoke size (scripts/smoke_paper.py), then render the book.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
export CDR_RESULTS_DIR="$PWD/_build/ci-results" CDR_CHECK_RESULTS=1
rm -rf "$CDR_RESULTS_DIR"
python -m pytest --nbval-lax --nbval-cell-timeout=1800 -p no:cacheprovider book tests "$@"
# the paper profile, end to end at smoke size: small copies of the paper datasets, random weights
python scripts/smoke_paper.py
jupyter-book build . --warningiserror --keep-going -q
test -f _build/html/index.html
echo "[test] book rendered: _build/html/index.html"
