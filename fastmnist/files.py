"""Writing a file so that readers see the old version or the new one, never a part-written one."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, write) -> None:
    """Calls write(binary file) on a temporary file beside `path`, then renames it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
