"""Unlabelled text for pretraining: the rules every corpus text passes. Cleaned like labelled
text, at least `min_chars` long, free of encoding damage, new (exact and after
normalisation), and never a validation or test text nor a text that contains one."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator

from tasks.lib.contract import DAMAGE_REGEX
from tasks.lib.textclean import clean_text, normalise

EMPTY = "empty after cleaning"
SHORT = "shorter than corpus.min_chars"
DAMAGED = "encoding damage"
EXACT_DUPLICATE = "exact duplicate"
NEAR_DUPLICATE = "duplicate after normalisation"
EQUALS_HELD_OUT = "equal to a validation/test text"
CONTAINS_HELD_OUT = "contains a validation/test text"
_DAMAGE = re.compile(DAMAGE_REGEX)


class HeldOut:
    """Validation and test texts, to be kept out of pretraining: equal after normalisation, or
    (for those of at least `min_words` words) contained whole in a corpus text."""

    def __init__(self, texts: Iterable[str], min_words: int):
        import ahocorasick

        self.keys = {k for k in map(normalise, texts) if k}
        self.automaton = ahocorasick.Automaton()
        for key in self.keys:
            if len(key.split()) >= min_words:
                self.automaton.add_word(f" {key} ", key)  # spaces: whole words only
        self.searchable = len(self.automaton) > 0
        if self.searchable:
            self.automaton.make_automaton()

    def reason(self, key: str) -> str | None:
        if key in self.keys:
            return EQUALS_HELD_OUT
        if self.searchable and next(self.automaton.iter(f" {key} "), None) is not None:
            return CONTAINS_HELD_OUT
        return None


class Seen:
    """Texts already kept, as 8-byte digests (exact and normalised), so memory grows by a few
    tens of bytes per kept text, not by the text."""

    def __init__(self):
        self.exact: set[bytes] = set()
        self.normalised: set[bytes] = set()

    def reason(self, text: str, key: str) -> str | None:
        exact, near = _digest(text), _digest(key)
        if exact in self.exact:
            return EXACT_DUPLICATE
        if near in self.normalised:
            return NEAR_DUPLICATE
        self.exact.add(exact)
        self.normalised.add(near)
        return None


def undo_wikitext(text: str) -> str:
    """One WikiText line as plain text: " @-@ " is a hyphen inside a word, " @,@ " / " @.@ "
    sit inside numbers, "<unk>" stands for a rare word, " = Title = " lines are headings."""
    text = text.strip()
    if text.startswith("=") and text.endswith("="):
        return ""
    return re.sub(r" @(.)@ ", r"\1", text).replace("<unk>", "").replace("  ", " ").strip()


class ShardWriter:
    """Kept texts into parquet shards of `shard_docs` texts each (shard-00000.parquet, ...)."""

    def __init__(self, folder, shard_docs: int):
        self.folder, self.shard_docs = folder, shard_docs
        self.buffer: list[str] = []
        self.shards = self.documents = 0

    def write(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.buffer.append(text)
            if len(self.buffer) == self.shard_docs:
                self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.buffer:
            pq.write_table(pa.table({"text": self.buffer}), self.folder / f"shard-{self.shards:05d}.parquet")
            self.shards, self.documents, self.buffer = self.shards + 1, self.documents + len(self.buffer), []


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def accepted(
    texts: Iterable[str], held_out: HeldOut, seen: Seen, counts: Counter, min_chars: int, clean: bool = True
) -> Iterator[str]:
    """The texts that pass every rule, in order; `counts` gains one count per text under
    "read" and, for each dropped one, under its reason."""
    for raw in texts:
        counts["read"] += 1
        text = clean_text(raw) if clean else raw.strip()
        key = normalise(text)
        reason = (
            EMPTY if not key
            else SHORT if len(text) < min_chars
            else DAMAGED if _DAMAGE.search(text)
            else held_out.reason(key) or seen.reason(text, key)
        )  # fmt: skip
        if reason:
            counts[reason] += 1
        else:
            counts["kept"] += 1
            yield text
