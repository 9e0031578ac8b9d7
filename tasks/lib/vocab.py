"""The tokenizer's special tokens: their names, in id order, and their ids read back from a
trained tokenizer, so no stage assumes an id."""

from __future__ import annotations

from pathlib import Path

from tasks.lib import catalog
from tasks.lib.common import StageError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def load_tokenizer(path: Path = catalog.TOKENIZER_FILE):
    from tokenizers import Tokenizer

    if not Path(path).exists():
        raise StageError(f"{path} not found: run the tokenize stage first")
    return Tokenizer.from_file(str(path))


def special_ids(tokenizer) -> dict[str, int]:
    """Each special token's id in this tokenizer."""
    ids = {name: tokenizer.token_to_id(name) for name in SPECIAL_TOKENS}
    if None in ids.values():
        missing = [name for name, i in ids.items() if i is None]
        raise StageError(f"the tokenizer has no {', '.join(missing)} token: re-run the tokenize stage")
    return ids
