"""How many objects (files, blobs) a Zarr store holds: the figure object storage bills and
lists by, and what sharding (``ArchiveConfig.shard_size``) brings down."""

from __future__ import annotations

import os
from pathlib import Path


def count_objects(store: str | os.PathLike) -> int:
    """Number of objects under ``store`` (a local path or an fsspec URL), metadata included."""
    path = str(store)
    if "://" in path and not path.startswith("file://"):
        import fsspec

        fs, root = fsspec.core.url_to_fs(path)
        return len(fs.find(root))
    root = Path(path.removeprefix("file://"))
    return sum(len(files) for _, _, files in os.walk(root))
