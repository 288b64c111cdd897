"""The text side of the image–text chapter: a word vocabulary built from the captions and a bi-GRU.

PCME's text encoder is GloVe + a bidirectional GRU; the default profile may not download GloVe, so
the word embeddings are learnt from the captions themselves (the paper profile can load GloVe into
:attr:`BiGRUText.embed`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

PAD, UNK = "<pad>", "<unk>"


def words(caption: str) -> list[str]:
    """Lower-case alphanumeric words: ``"red apple"`` → ``["red", "apple"]``."""
    return re.findall(r"[a-z0-9]+", caption.lower())


class Vocabulary:
    """Word ↔ id; id 0 is padding, id 1 stands for words never seen when the vocabulary was
    built."""

    def __init__(self, tokens: Sequence[str]):
        self.itos = [PAD, UNK, *tokens]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
        counts = Counter(w for c in captions for w in words(c))
        return cls(sorted(w for w, n in counts.items() if n >= min_count))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → ``(ids (B, T) int64, mask (B, T) bool)``, padded to the longest caption."""
        rows = [[self.stoi.get(w, 1) for w in words(c)] or [1] for c in captions]
        t = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), t, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, ids != 0


class BiGRUText(nn.Module):
    """Word embeddings → bidirectional GRU.

    forward(ids (B, T), mask (B, T)) → ``(pooled (B, 2H), local (B, T, 2H))``: the pooled feature
    is the mean of the GRU outputs over the caption's words; ``local`` feeds attention pooling.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 128, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.num_features = 2 * hidden

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(ids), lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        local, _ = nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=ids.shape[1]
        )
        pooled = (local * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return pooled, local
