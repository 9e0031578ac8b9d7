"""Unlabelled text for pretraining: the rules every corpus text passes. Cleaned like labelled
text, at least `min_chars` long, free of encoding damage, new (exact and after
normalisation), and never a validation or test text nor a text that contains one."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tasks.lib.contract import DAMAGE_REGEX
from tasks.lib.textclean import clean_text, leak_keys, normalise

EMPTY = "empty after cleaning"
SHORT = "shorter than corpus.min_chars"
DAMAGED = "encoding damage"
EXACT_DUPLICATE = "exact duplicate"
NEAR_DUPLICATE = "duplicate after normalisation"
EQUALS_HELD_OUT = "equal to a validation/test text"
CONTAINS_HELD_OUT = "contains a validation/test text"
MASKED_HELD_OUT = "a validation/test text once usernames, links and retweet prefixes are masked"
_DAMAGE = re.compile(DAMAGE_REGEX)


class HeldOut:
    """Validation and test texts, to be kept out of pretraining: equal after normalisation, or
    (for those of at least `min_words` words) contained whole in a corpus text; and the same
    again once usernames, links and retweet prefixes are masked (`textclean.leak_keys`), so a
    retweet of a short test tweet, or a copy naming another user, is caught too."""

    def __init__(self, texts: Iterable[str], min_words: int):
        texts = list(texts)
        self.keys = {k for k in map(normalise, texts) if k}
        self.masked = {keys[0] for keys in map(leak_keys, texts) if keys}
        self.contained = _Automaton(self.keys, min_words)
        self.masked_contained = _Automaton(self.masked, min_words)

    def reason(self, text: str, key: str) -> str | None:
        if key in self.keys:
            return EQUALS_HELD_OUT
        if self.contained.finds(key):
            return CONTAINS_HELD_OUT
        masked = leak_keys(text)
        if any(k in self.masked for k in masked) or (masked and self.masked_contained.finds(masked[0])):
            return MASKED_HELD_OUT
        return None


class _Automaton:
    """Finds any of the `keys` of at least `min_words` words, as whole words, inside a key."""

    def __init__(self, keys: set[str], min_words: int):
        import ahocorasick

        self.automaton = ahocorasick.Automaton()
        for key in keys:
            if len(key.split()) >= min_words:
                self.automaton.add_word(f" {key} ", key)  # spaces: whole words only
        self.searchable = len(self.automaton) > 0
        if self.searchable:
            self.automaton.make_automaton()

    def finds(self, key: str) -> bool:
        return self.searchable and next(self.automaton.iter(f" {key} "), None) is not None


class Seen:
    """Texts already kept, as 8-byte digests (exact and normalised) in an SQLite file, so
    memory stays flat however large the corpus (`path` None: in memory, for small inputs).
    A batch is checked with two indexed joins; within a batch, the first occurrence wins."""

    def __init__(self, path: Path | None = None):
        import sqlite3

        self.db = sqlite3.connect(str(path) if path else ":memory:")
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-65536;"  # 64 MiB page cache
            "CREATE TABLE exact(d INTEGER PRIMARY KEY); CREATE TABLE near(d INTEGER PRIMARY KEY);"
            "CREATE TEMP TABLE batch(d INTEGER PRIMARY KEY);"
        )

    def reasons(self, texts: list[str], keys: list[str]) -> list[str | None]:
        """Per text: EXACT_DUPLICATE, NEAR_DUPLICATE or None (new: now remembered)."""
        exact, near = [_digest(t) for t in texts], [_digest(k) for k in keys]
        known_exact, known_near = self._known("exact", exact), self._known("near", near)
        out, new = [], []
        for e, n in zip(exact, near, strict=True):
            if e in known_exact:
                out.append(EXACT_DUPLICATE)
            elif n in known_near:
                out.append(NEAR_DUPLICATE)
            else:
                out.append(None)
                known_exact.add(e)
                known_near.add(n)
                new.append((e, n))
        self.db.executemany("INSERT OR IGNORE INTO exact VALUES (?)", [(e,) for e, _ in new])
        self.db.executemany("INSERT OR IGNORE INTO near VALUES (?)", [(n,) for _, n in new])
        return out

    def _known(self, table: str, digests: list[int]) -> set[int]:
        self.db.execute("DELETE FROM batch")
        self.db.executemany("INSERT OR IGNORE INTO batch VALUES (?)", [(d,) for d in digests])
        return {d for (d,) in self.db.execute(f"SELECT batch.d FROM batch JOIN {table} USING (d)")}

    def close(self) -> None:
        self.db.close()


def undo_wikitext(text: str) -> str:
    """One WikiText line as plain text: " @-@ " is a hyphen inside a word, " @,@ " / " @.@ "
    sit inside numbers, "<unk>" stands for a rare word, " = Title = " lines are headings."""
    text = text.strip()
    if text.startswith("=") and text.endswith("="):
        return ""
    return re.sub(r" @(.)@ ", r"\1", text).replace("<unk>", "").replace("  ", " ").strip()


class ShardWriter:
    """Kept texts into parquet shards of `shard_docs` texts each (shard-00000.parquet, ...),
    each text with the index of its source (the order of stats.json's `sources`), so tokenize
    can count every source's tokens."""

    def __init__(self, folder, shard_docs: int):
        self.folder, self.shard_docs = folder, shard_docs
        self.buffer: list[str] = []
        self.origin: list[int] = []
        self.shards = self.documents = 0

    def write(self, texts: Iterable[str], source: int = 0) -> None:
        for text in texts:
            self.buffer.append(text)
            self.origin.append(source)
            if len(self.buffer) == self.shard_docs:
                self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.buffer:
            table = pa.table({"text": self.buffer, "source": pa.array(self.origin, pa.int32())})
            pq.write_table(table, self.folder / f"shard-{self.shards:05d}.parquet")
            self.shards, self.documents = self.shards + 1, self.documents + len(self.buffer)
            self.buffer, self.origin = [], []


def _digest(text: str) -> int:
    """8 bytes of BLAKE2b as a signed 64-bit integer (SQLite's INTEGER)."""
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little", signed=True)


def accepted(
    texts: Iterable[str], held_out: HeldOut, seen: Seen, counts: Counter, min_chars: int, clean: bool = True
) -> Iterator[str]:
    """The texts that pass every rule, in order; `counts` gains one count per text under
    "read" and, for each dropped one, under its reason. Duplicates are checked as one batch."""
    candidates: list[tuple[str, str]] = []
    for raw in texts:
        counts["read"] += 1
        text = clean_text(raw) if clean else raw.strip()
        key = normalise(text)
        reason = (
            EMPTY if not key
            else SHORT if len(text) < min_chars
            else DAMAGED if _DAMAGE.search(text)
            else held_out.reason(text, key)
        )  # fmt: skip
        if reason:
            counts[reason] += 1
        else:
            candidates.append((text, key))
    verdicts = seen.reasons([t for t, _ in candidates], [k for _, k in candidates]) if candidates else []
    for (text, _), reason in zip(candidates, verdicts, strict=True):
        if reason:
            counts[reason] += 1
        else:
            counts["kept"] += 1
            yield text
