"""cdrlib — the library behind the book on unsupervised cross-domain and cross-modal retrieval.

Each module holds one concept of the book; chapters import them and show their source.

Where each chapter's ideas live:

- 01 data: ``data`` (the embedded emoji domains, the paper datasets, image folders, augmentations).
- 02 metrics: ``metrics`` (every retrieval metric from the ranks of the relevant items),
  ``search`` (exact top-k, and search and metrics from one pass), ``evaluation`` (the tables).
- 03 ViT: ``models`` (backbones, the small ViT and its attention); ``pretrain`` and
  ``contrastive`` (how the shipped backbones were trained).
- 04 UCDIR: ``ucdir`` (the losses), ``ucdir_train`` (the method and its training), ``clustering``,
  ``memory``; ``experiment`` (the chapters' pair benchmark) and ``premise`` (the premise dials).
- 05 DoD: ``ucdir`` (both DoD forms), ``sinkhorn`` (entropic OT for the centroid matching).
- 06 IBNM: ``fusion`` (attention-guided patch fusion and its losses), ``noise`` (the noisy-label
  split), ``ibnm_train``.
- 07 PCME: ``pcme`` (probabilistic embeddings and the match probability), ``pcme_train``, ``text``.
- 08 ICFRR: ``rerank`` (the sparse re-ranking and its dense reference).
- Shared by all: ``training`` (the resumable loop), ``inference`` (batched feature passes),
  ``parallel`` (chunks side by side), ``run_store`` and ``checkpoint_io`` (stored runs, safe
  loading), ``results`` (saved tables and their tolerances), ``profile`` (the chapters' first
  cell), ``paths``, ``progress``, ``validation``, ``plotting``, ``exercises``.
"""

from .profile import Profile, pick_device, profile_name, progress, seed_everything, setup

__version__ = "0.1.0"
__all__ = [
    "Profile",
    "pick_device",
    "profile_name",
    "progress",
    "seed_everything",
    "setup",
    "__version__",
]
