"""corpus: the unlabelled text pretraining reads, from the labelled training split and the
sources in params.yaml's `corpus` section.

    python -m tasks.corpus            # reads data/validated and corpus.sources, writes data/corpus/

Every text is cleaned like labelled text and kept only when it is long enough, free of
encoding damage, new (exact and after normalisation, across all sources), and neither equal
to a validation or test text nor containing one of at least `corpus.min_leak_words` words.
Sources stream through a chunk at a time into parquet shards; the 8-byte digests of the kept
texts go to an SQLite file beside the shards (deleted at the end), so memory stays flat. What was read, kept and dropped, by reason, goes to data/corpus/stats.json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tasks.lib import catalog
from tasks.lib.common import StageError, atomic_dir, run_stage, write_json_atomic
from tasks.lib.config import CorpusParams, CorpusSource, IngestParams, Params, load_params
from tasks.lib.corpus import DAMAGED, HeldOut, Seen, ShardWriter, accepted, undo_wikitext
from tasks.lib.corpus_sources import read_texts
from tasks.lib.sources import ReadSpec

TRAIN_TEXT = "the labelled training split"
SEEN_FILE = ".seen.sqlite"  # scratch: the digests of kept texts, while the stage runs


def layout(source: CorpusSource) -> ReadSpec:
    """The source's layout, unset keys taking the readers' defaults (IngestParams')."""
    fields = {f: getattr(source, f, None) for f in ReadSpec.__dataclass_fields__ if f != "path"}
    defaults = {f: IngestParams.model_fields[f].default for f in fields}
    return ReadSpec(path=source.path, **{f: defaults[f] if v is None else v for f, v in fields.items()})


def sources(c: CorpusParams, root: Path) -> Iterator[tuple[str, Iterator[list[str]]]]:
    """(name, chunks of texts) for every source, the training split's text first."""
    if c.train_text:
        train = pd.read_parquet(catalog.at(root, catalog.split_file("train")), columns=["text"])
        yield TRAIN_TEXT, iter([train["text"].tolist()])
    for source in c.sources:
        chunks = read_texts(layout(source))
        if source.markup == "wikitext":
            chunks = ([undo_wikitext(t) for t in chunk] for chunk in chunks)
        yield source.path, chunks


def check(name: str, counts: Counter, c: CorpusParams) -> None:
    """A source that gives nothing, or too much damage, is an error; partial loss is counted."""
    if counts["read"] == 0:
        raise StageError(f"corpus source {name} has no texts (an empty file?)")
    damaged = counts[DAMAGED] / counts["read"]
    if damaged > c.max_damaged_share:
        raise StageError(
            f"corpus source {name}: {counts[DAMAGED]:,} of {counts['read']:,} texts ({damaged:.1%}) carry encoding "
            f"damage, over corpus.max_damaged_share={c.max_damaged_share}; check the source's encoding"
        )
    if counts["kept"] == 0:
        why = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k not in ("read", "kept"))
        raise StageError(f"corpus source {name}: none of its {counts['read']:,} texts was kept ({why})")


def corpus(params: Params, root: Path = Path(".")) -> dict:
    c = params.corpus
    held_out = [pd.read_parquet(catalog.at(root, catalog.split_file(s)))["text"] for s in ("validation", "test")]
    held = HeldOut(pd.concat(held_out).tolist(), c.min_leak_words)
    report = []
    with atomic_dir(catalog.at(root, catalog.CORPUS)) as tmp:
        seen, shards = Seen(tmp / SEEN_FILE), ShardWriter(tmp, c.shard_docs)
        for index, (name, chunks) in enumerate(sources(c, root)):
            counts: Counter = Counter()
            with tqdm(desc=f"corpus {name}", unit=" texts", mininterval=5) as bar:
                for chunk in chunks:
                    shards.write(accepted(chunk, held, seen, counts, c.min_chars, params.ingest.clean_text), index)
                    bar.update(len(chunk))
            check(name, counts, c)
            report.append({"source": name, **counts})
        shards.flush()
        seen.close()
        (tmp / SEEN_FILE).unlink()
        stats = {"sources": report, "documents": shards.documents, "shards": shards.shards}
        write_json_atomic(tmp / catalog.CORPUS_STATS.name, stats)
    return stats


def main() -> None:
    import mlflow

    from tasks.lib.tracking import log_metrics, stage_run

    params = load_params()
    with stage_run("corpus", {"corpus": params.corpus.model_dump()}):
        stats = corpus(params)
        log_metrics({"documents": stats["documents"], "shards": stats["shards"]})
        mlflow.log_dict(stats, catalog.CORPUS_STATS.name)
    for s in stats["sources"]:
        dropped = ", ".join(f"{k} {v:,}" for k, v in s.items() if k not in ("source", "read", "kept"))
        print(
            f"corpus: {s['source']}: {s['read']:,} read, {s['kept']:,} kept"
            + (f" (dropped: {dropped})" if dropped else "")
        )
    print(f"corpus: {stats['documents']:,} texts in {stats['shards']} shard(s)")


if __name__ == "__main__":
    run_stage(main)
