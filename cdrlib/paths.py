"""Where the repository's files are: the root, and where chapters save their results tables.

The bottom of the library: the data layer, the run store and the profile all read these, so this
module imports nothing of the package.

The embedded data, the shipped backbones and the chapters live in the repository, beside the
package. A clone or an editable install (``pip install -e``) finds them next to ``cdrlib/``; a
plain ``pip install <repo>`` copies the package alone, and then the repository is ``CDR_REPO`` or
the nearest folder above the working directory that holds ``data/emoji_domains`` (a chapter runs
in ``book/``).
"""

from __future__ import annotations

import os
from pathlib import Path


def find_repo_root() -> Path:
    """The repository the package belongs to (see the module docstring for the search order)."""
    here = Path(__file__).resolve().parents[1]
    if (here / "data" / "emoji_domains").is_dir():
        return here
    if os.environ.get("CDR_REPO"):
        return Path(os.environ["CDR_REPO"]).expanduser().resolve()
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "data" / "emoji_domains").is_dir() and (folder / "cdrlib").is_dir():
            return folder
    return here


REPO_ROOT = find_repo_root()


def default_results_dir() -> Path:
    """Where chapters save results tables: ``CDR_RESULTS_DIR``, else ``book/results`` in the
    repository."""
    return Path(os.environ.get("CDR_RESULTS_DIR", REPO_ROOT / "book" / "results")).expanduser()
