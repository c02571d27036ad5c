"""Atomic file writes shared by the corpus writers and the evaluator.

A file is written under a temporary name in its own folder, then renamed over
the target, so a reader never sees half a file and a crash leaves the previous
version in place. Imports nothing from the package.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: temporary file in the same folder, then rename."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
