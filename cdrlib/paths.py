"""Where the repository's files are: the root, and where chapters save their results tables.

The bottom of the library: the data layer, the run store and the profile all read these, so this
module imports nothing of the package.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_results_dir() -> Path:
    """Where chapters save results tables: ``CDR_RESULTS_DIR``, else ``book/results`` in the
    repository."""
    return Path(os.environ.get("CDR_RESULTS_DIR", REPO_ROOT / "book" / "results")).expanduser()
