"""Data loading: DALI (GPU / CPU) and torch readers of the shards behind one `make_loader`."""
from .loader import Loader, make_loader

__all__ = ["Loader", "make_loader"]
