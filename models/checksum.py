"""SHA-256 of a file, taken at registration and checked when the registered model loads
(here because `models/` is the code that ships with the model)."""

import hashlib


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
