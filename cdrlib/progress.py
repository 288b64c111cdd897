"""Progress bars for long work, silent where nobody watches (CI, nbval, logs)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    """A tqdm progress bar that stays silent when nobody is watching (CI, nbval, logs).

    Set ``CDR_PROGRESS=1`` to force bars on, ``0`` to force them off.
    """
    forced = os.environ.get("CDR_PROGRESS")
    if forced is not None:
        disable = forced == "0"
    else:
        disable = bool(os.environ.get("CI")) or not (sys.stderr.isatty() or _in_notebook())
        disable = disable or bool(os.environ.get("CDR_NO_PROGRESS"))
    kwargs.setdefault("disable", disable)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # optional: IPython comes with the book's extras only
    except ImportError:  # pragma: no cover
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
