#!/usr/bin/env bash
# Command 1: install what is needed, execute every chapter on the embedded data (refreshing the
# committed outputs and book/results/), and render the book to _build/html.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
python scripts/run_chapters.py "$@"
jupyter-book build . --warningiserror --keep-going -q
echo "[book] rendered: $(pwd)/_build/html/index.html"
