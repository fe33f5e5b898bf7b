"""Files replaced whole: a reader sees the old file or the new one, never a part of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomically(path: Path, text: str | Iterable[str], *, mode: int | None = None) -> None:
    """Write `text` (or its parts, one after the other) to a temporary file beside
    `path`, then rename it over `path`.

    `mode` sets the permissions before the rename (e.g. 0o600 for secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if isinstance(text, str):
                out.write(text)
            else:
                out.writelines(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
