# Sourced by scripts/book.sh and scripts/test.sh: make .venv and install the project into it.
# Idempotent: a second run only checks a stamp (the hash of pyproject.toml).
set -euo pipefail
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.cdrlib-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing cdrlib with the book and test extras (first run: several minutes)"
  # pip's output, less the notes about local package folders some machines configure
  quiet() {
    local rc=0 log
    log=$(mktemp)
    "$@" > "$log" 2>&1 || rc=$?
    grep -v "^WARNING: Location 'file:" "$log" || true
    rm -f "$log"
    return "$rc"
  }
  quiet python -m pip install -q --upgrade pip
  # torch first, on its own: where a torch is already present (Colab) it is kept.
  python -c "import torch, torchvision" 2>/dev/null || quiet python -m pip install -q "torch>=2.1" "torchvision>=0.16"
  quiet python -m pip install -q -e ".[book,test]"
  echo "$want" > "$stamp"
fi
export HF_HUB_OFFLINE=1 CDR_PROGRESS=${CDR_PROGRESS:-0} PYTHONHASHSEED=0
