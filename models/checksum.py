"""SHA-256 of a file or of a code folder, taken at registration and checked when the
registered model loads (here because `models/` is the code that ships with the model)."""

import hashlib
from pathlib import Path


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_sha256(folder) -> str:
    """One digest of every `.py` file under `folder` (paths and contents; caches ignored)."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*.py")):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()
