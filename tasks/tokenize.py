"""tokenize: train a subword tokenizer (or reuse a base model's), encode every split and the corpus.

python -m tasks.tokenize          # reads data/validated/ and data/corpus/, writes checkpoints/tokenizer/ and data/tokenized/

The tokenizer learns from the labelled training split (`tokenize.fit_on: train`) or from the
whole corpus (`corpus`: what a base model, reused on other datasets, wants); never from
validation or test text. With `pretrain.init_from` the base model's tokenizer is reused as it
is, so the data gets the ids its weights were trained on.

The corpus (data/corpus, unlabelled, for pretraining only) is encoded untruncated, one shard
per process, into one flat array of token ids per shard (`data/tokenized/corpus/*.npy`) that
pretraining memory-maps; it never reaches fine-tuning or evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tqdm import tqdm

from models.inference import encode
from tasks.lib import base_model, catalog, corpus_report
from tasks.lib.common import StageError, atomic_dir, read_json, run_stage, write_json_atomic
from tasks.lib.config import TokenizeParams, load_params
from tasks.lib.vocab import SPECIAL_TOKENS

URL_PATTERN = r"https?://\S+"


def build_tokenizer(cfg: TokenizeParams) -> tuple[Tokenizer, object]:
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    if cfg.collapse_urls:
        # Short links are random strings: as sub-words they are noise the LM cannot predict.
        # The normaliser lives in tokenizer.json, so the served model applies it too.
        norm.append(normalizers.Replace(Regex(URL_PATTERN), "http"))
    if cfg.kind == "bpe":
        # Byte-level BPE: every input is representable, so no text maps to [UNK].
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
        )
    tok.normalizer = normalizers.Sequence(norm)
    return tok, trainer


def train_tokenizer(texts, cfg: TokenizeParams) -> Tokenizer:
    tok, trainer = build_tokenizer(cfg)
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.enable_truncation(cfg.max_length)
    return tok


def encode_shard(job: tuple[str, str, str]) -> tuple[int, np.ndarray]:
    """One corpus shard (parquet) to one .npy of token ids, documents end to end, each
    [CLS] ... [SEP] and never cut. Returns (documents, tokens per source index). Runs in a
    worker process."""
    tokenizer_json, shard, out = job
    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_truncation()
    frame = pd.read_parquet(shard)
    texts, origin = frame["text"].tolist(), frame["source"].to_numpy()
    dtype = np.uint16 if tok.get_vocab_size() <= np.iinfo(np.uint16).max + 1 else np.uint32
    parts, lengths = [], []
    for k in range(0, len(texts), 10_000):
        ids = encode(tok, texts[k : k + 10_000])
        lengths += [len(x) for x in ids]
        parts.append(np.fromiter((i for x in ids for i in x), dtype=dtype))
    np.save(out, np.concatenate(parts) if parts else np.zeros(0, dtype=dtype))
    return len(texts), np.bincount(origin, weights=lengths).astype(np.int64) if len(texts) else np.zeros(0, np.int64)


def encode_corpus(tok: Tokenizer, corpus_dir: Path, out_dir: Path) -> dict:
    """Every corpus shard encoded in parallel (one process per core): the shards are the unit,
    so the result does not depend on how many processes ran."""
    import multiprocessing

    out_dir.mkdir()
    shards = sorted(corpus_dir.glob("shard-*.parquet"))
    if not shards:
        raise StageError(f"{corpus_dir} holds no shards: run the corpus stage first")
    jobs = [(tok.to_str(), str(s), str(out_dir / f"{s.stem}.npy")) for s in shards]
    workers = min(len(jobs), len(os.sched_getaffinity(0)))
    progress = {"desc": "tokenize corpus", "unit": " shards", "total": len(jobs), "mininterval": 5}
    if workers == 1:
        done = [encode_shard(job) for job in tqdm(jobs, **progress)]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            done = list(tqdm(pool.imap(encode_shard, jobs), **progress))  # imap keeps the shards' order
    by_source = np.zeros(max((len(t) for _, t in done), default=0), np.int64)
    for _, tokens in done:
        by_source[: len(tokens)] += tokens
    return {"corpus_documents": sum(d for d, _ in done), "corpus_tokens": int(by_source.sum()),
            "corpus_tokens_by_source": [int(t) for t in by_source]}  # fmt: skip


def corpus_texts(corpus_dir: Path):
    """The corpus, one shard at a time (never all in memory)."""
    for shard in sorted(corpus_dir.glob("shard-*.parquet")):
        yield from pd.read_parquet(shard)["text"].tolist()


def fitted_tokenizer(cfg: TokenizeParams, init_from: str | None, train_texts: list[str], corpus_dir: Path) -> Tokenizer:
    """The base model's tokenizer (with this run's truncation), or a new one fitted on `cfg.fit_on`."""
    if init_from:
        with base_model.opened(init_from) as base:
            tok = Tokenizer.from_file(str(base.tokenizer_file))
        tok.enable_truncation(cfg.max_length)
        print(f"tokenize: reusing the tokenizer of {init_from} (pretrain.init_from)")
        return tok
    return train_tokenizer(train_texts if cfg.fit_on == "train" else corpus_texts(corpus_dir), cfg)


def tokenize(cfg: TokenizeParams, labels: list[str], root: Path = Path("."), init_from: str | None = None) -> dict:
    """Read `root`'s validated splits and corpus; write its tokenized splits and tokenizer."""
    import datasets

    out_dir, tokenizer_dir = catalog.at(root, catalog.TOKENIZED), catalog.at(root, catalog.TOKENIZER)
    splits = {s: pd.read_parquet(catalog.at(root, catalog.split_file(s))) for s in catalog.SPLITS}
    tok = fitted_tokenizer(cfg, init_from, splits["train"]["text"].tolist(), catalog.at(root, catalog.CORPUS))
    label_ids = {name: i for i, name in enumerate(labels)}
    stats = {"vocab_size": tok.get_vocab_size()}
    with atomic_dir(out_dir) as tmp:
        for s, df in splits.items():
            ids = encode(tok, df["text"].tolist())
            ds = datasets.Dataset.from_dict({"input_ids": ids, "label": df["label"].map(label_ids).tolist()})
            ds.save_to_disk(str(tmp / s))
            lengths = [len(x) for x in ids]
            stats[f"{s}_tokens"] = sum(lengths)
            stats[f"{s}_truncated"] = sum(n >= cfg.max_length for n in lengths)
        stats |= encode_corpus(tok, catalog.at(root, catalog.CORPUS), tmp / catalog.CORPUS_TOKENS.name)
        write_json_atomic(tmp / catalog.TOKEN_STATS.name, stats)
    with atomic_dir(tokenizer_dir) as tmp:
        tok.save(str(tmp / catalog.TOKENIZER_FILE.name))
        write_json_atomic(tmp / catalog.LABELS_FILE.name, labels)
    with atomic_dir(catalog.at(root, catalog.CORPUS_REPORT)) as tmp:
        corpus_stats = read_json(catalog.at(root, catalog.CORPUS_STATS))
        (tmp / catalog.REPORT_PAGE).write_text(corpus_report.render_html(corpus_stats, stats))
    return stats


def main() -> None:
    from tasks.lib.tracking import log_metrics, stage_run

    params = load_params()
    section = {"tokenize": params.tokenize.model_dump(), "pretrain": {"init_from": params.pretrain.init_from}}
    with stage_run("tokenize", section):
        import mlflow

        stats = tokenize(params.tokenize, params.ingest.labels, init_from=params.pretrain.init_from)
        log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
        mlflow.log_artifacts(str(catalog.CORPUS_REPORT), "corpus")
    print(
        f"tokenize: vocabulary {stats['vocab_size']}, {stats['train_tokens']:,} training tokens, "
        f"{stats['corpus_tokens']:,} corpus tokens for pretraining"
    )


if __name__ == "__main__":
    run_stage(main)
