"""tokenize: train a subword tokenizer on the training split only, encode every split.

python -m tasks.tokenize          # reads data/validated/, writes checkpoints/tokenizer/ and data/tokenized/

With `tokenize.extra_text`, unlabelled text files are encoded too (`data/tokenized/extra`),
untruncated, for pretraining only: they never reach fine-tuning or evaluation.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from models.inference import encode
from tasks.lib import catalog
from tasks.lib.common import StageError, atomic_dir, run_stage, write_json_atomic
from tasks.lib.config import TokenizeParams, load_params
from tasks.lib.sources import expand_path
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


def train_tokenizer(texts: list[str], cfg: TokenizeParams) -> Tokenizer:
    tok, trainer = build_tokenizer(cfg)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.enable_truncation(cfg.max_length)
    return tok


def clean_extra_line(line: str) -> str | None:
    """One document of an extra corpus, or None for a blank line or a heading. Undoes
    WikiText's conventions: " @-@ " for a hyphen inside a word, " @,@ " / " @.@ " inside
    numbers, "<unk>" for rare words, " = Title = " headings."""
    import re

    text = line.strip()
    if not text or (text.startswith("=") and text.endswith("=")):
        return None
    text = re.sub(r" @(.)@ ", r"\1", text).replace("<unk>", "").replace("  ", " ").strip()
    return text or None


def read_extra_text(paths: list[str]) -> list[str]:
    docs = []
    for raw in paths:
        path = expand_path(raw)
        if not path.is_file():
            raise StageError(f"tokenize.extra_text: {path} is not a file (set DATA_ROOT if it uses $DATA_ROOT)")
        with open(path, encoding="utf-8") as f:
            docs += [d for d in map(clean_extra_line, f) if d]
    return docs


def tokenize(cfg: TokenizeParams, labels: list[str], root: Path = Path(".")) -> dict:
    """Read `root`'s validated splits; write its tokenized splits and tokenizer."""
    import datasets

    out_dir, tokenizer_dir = catalog.at(root, catalog.TOKENIZED), catalog.at(root, catalog.TOKENIZER)
    splits = {s: pd.read_parquet(catalog.at(root, catalog.split_file(s))) for s in catalog.SPLITS}
    tok = train_tokenizer(splits["train"]["text"].tolist(), cfg)
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
        if cfg.extra_text:
            docs = read_extra_text(cfg.extra_text)
            whole = Tokenizer.from_str(tok.to_str())  # documents are packed for pretraining: never cut
            whole.no_truncation()
            ids = encode(whole, docs)
            datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(tmp / catalog.EXTRA_TOKENS.name))
            stats |= {"extra_documents": len(docs), "extra_tokens": sum(len(x) for x in ids)}
        write_json_atomic(tmp / catalog.TOKEN_STATS.name, stats)
    with atomic_dir(tokenizer_dir) as tmp:
        tok.save(str(tmp / catalog.TOKENIZER_FILE.name))
        write_json_atomic(tmp / catalog.LABELS_FILE.name, labels)
    return stats


def main() -> None:
    from tasks.lib.tracking import stage_run

    params = load_params()
    with stage_run("tokenize", {"tokenize": params.tokenize.model_dump()}):
        import mlflow

        stats = tokenize(params.tokenize, params.ingest.labels)
        mlflow.log_metrics(stats)
    extra = f", {stats['extra_tokens']} extra pretraining tokens" if "extra_tokens" in stats else ""
    print(f"tokenize: vocabulary {stats['vocab_size']}, {stats['train_tokens']} training tokens{extra}")


if __name__ == "__main__":
    run_stage(main)
