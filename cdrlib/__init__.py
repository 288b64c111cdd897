"""cdrlib — the library behind the book on unsupervised cross-domain and cross-modal retrieval.

Each module holds one concept of the book; chapters import them and show their source.
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
