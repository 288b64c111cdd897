"""Reading checkpoints without running code from them, and noticing when they were damaged.

``torch.load`` unpickles: a checkpoint can hold any Python object, and unpickling a crafted one runs
arbitrary code. Every load in the library goes through :func:`load_state`, which allows only tensors
and plain containers (``weights_only=True``) and turns a refusal into an error that says what to do.
Writers store random-generator states as tensors and configurations as JSON text for that reason.

:func:`state_digest` is a sha256 over a state's tensors and plain values, in order: stored inside a
run checkpoint, it shows on loading that no byte of its tensor data changed since it was written.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as it is; the message says why and what to do."""


def load_state(path: str | Path, what: str = "checkpoint") -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True`` onto the CPU.

    Args:
        path: the file; what: how messages name it (``"run checkpoint"``, ``"MoCo v2 weights"``).
    Raises:
        CheckpointError: the file is missing, damaged, or holds objects other than tensors and plain
            containers (which could run code when unpickled; it is not loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} ({what}) holds Python objects besides tensors and plain containers; loading "
            "it could run "
            "code, so cdrlib refuses. If you trust its source, unpickle it yourself and save only "
            "its "
            f"state_dict (tensors). ({str(e).splitlines()[0][:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} ({what}) cannot be read — a damaged or truncated file? Delete it and "
            f"write or download it again. ({str(e)[:200]})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} ({what}) holds a {type(state).__name__}, not a dict of states"
        )
    return state


def state_digest(state) -> str:
    """sha256 (hex) of a nested state: dict keys, plain values, and every tensor's dtype, shape and
    bytes."""
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k in x:
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())

    walk(state)
    return h.hexdigest()
