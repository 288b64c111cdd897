"""Reading checkpoints without running code from them, and noticing when they were damaged.

``torch.load`` unpickles: a checkpoint can hold any Python object, and unpickling a crafted one runs
arbitrary code. Every load in the library goes through :func:`load_state`, which allows only tensors
and plain containers (``weights_only=True``) and turns a refusal into an error that says what to do.
Writers store random-generator states as tensors and configurations as JSON text for that reason.
:func:`save_state` writes a checkpoint whole or not at all, xz-compressed when asked (the book's
backbones and stored runs are); :func:`load_state` reads both kinds, and decompresses with a bound.

:func:`state_digest` is a sha256 over a state's tensors and plain values, in order: stored inside a
run checkpoint, it shows on loading that no byte of its tensor data changed since it was written.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import pickle
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as it is; the message says why and what to do."""


class ChecksumError(CheckpointError):
    """A checkpoint's bytes do not have the sha256 recorded for them (callers say what to do)."""


# the first six bytes of an xz stream: :func:`save_state` compresses with xz when asked
XZ_MAGIC = b"\xfd7zXZ\x00"
# how far a compressed checkpoint may expand: tensors of small codes expand about 1.5×; a file that
# expands further is refused rather than decompressed into memory without bound
MAX_EXPANSION = 64


def save_state(state: dict, path: str | Path, compress: bool = False) -> None:
    """Write ``state`` (tensors and plain containers) to ``path``, whole or not at all.

    The bytes go to a temporary file beside ``path``, renamed once written, so an interrupted write
    leaves no half file. ``compress``: the ``torch.save`` bytes are xz-compressed, which
    :func:`load_state` recognises (``torch.load`` alone does not). Worth it for small integer
    codes (a stored UCDIR head's 8-bit codes carry about 5 bits each) and a little
    for float16 weights (the backbones: 10 % smaller); not for a resumable training checkpoint
    written every epoch.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if compress:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)


def _decompressed(data: bytes, path: Path, what: str) -> io.BytesIO:
    """The torch.save bytes of an xz-compressed checkpoint (``data``, read from ``path``), at most
    MAX_EXPANSION × its size."""
    limit = MAX_EXPANSION * len(data) + 2**20
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        out = decompressor.decompress(data, max_length=limit)
    except lzma.LZMAError as e:
        raise CheckpointError(
            f"{path} ({what}) is a damaged xz file ({e}). Delete it and write or download it again."
        ) from None
    if not decompressor.eof:
        raise CheckpointError(
            f"{path} ({what}) is truncated, or expands to more than {MAX_EXPANSION}× its size, "
            "which no checkpoint cdrlib writes does; it is not loaded. Delete it and write or "
            "download it again."
        )
    return io.BytesIO(out)


def load_state(path: str | Path, what: str = "checkpoint", sha256: str | None = None) -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True`` onto the CPU (an xz-compressed
    one, as :func:`save_state` writes with ``compress=True``, is decompressed first).

    Args:
        path: the file; what: how messages name it (``"run checkpoint"``, ``"MoCo v2 weights"``).
        sha256: the digest recorded for the file, or None. When given, the file is read once and
            those bytes are checked and then loaded, so no other bytes can be loaded than the ones
            checked (a file replaced between a separate check and the load would be).
    Raises:
        ChecksumError: the bytes' sha256 is not ``sha256``; nothing was unpickled.
        CheckpointError: the file is missing, damaged, or holds objects other than tensors and plain
            containers (which could run code when unpickled; it is not loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    with open(path, "rb") as f:  # one read: what is checked and decompressed is what loads
        head = f.read(len(XZ_MAGIC))
        compressed = head == XZ_MAGIC
        # the whole file in memory only when it is checked or decompressed; else torch reads it
        data = head + f.read() if compressed or sha256 is not None else None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ChecksumError(
            f"{path} ({what}) does not have the sha256 recorded for it: a damaged or replaced file"
        )
    if compressed:
        source = _decompressed(data, path, what)
    else:
        source = path if data is None else io.BytesIO(data)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
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
