"""How much context has the language model learnt? Count-based references on the same tokens.

Unigram and bigram models are counted on the pretraining corpus (`data/tokenized/corpus`) and
scored, like the language model's validation loss, on the validation split's tokens (every
ordinary token a target; [CLS], [SEP] and the other special tokens never are):

- unigram: no context at all (the floor a language model starts from);
- left bigram: P(x | the token before), interpolated with the unigram;
- both neighbours: P(x | before, after) proportional to P(x | before) x P(after | x), the two
  neighbours a masked LM sees first.

The interpolation weight is chosen on the last tenth of the corpus, counted on the rest; the
validation split chooses nothing. Run after `dvc repro pretrain` (or in any folder the stages
ran in); prints the references beside the language model's own validation loss. For MLM the
like-for-like figure is its loss at [MASK] positions alone (`val_masked_loss`): its headline
loss also scores chosen tokens left in place, which it can copy, and no count model sees the
token it predicts:

    python bench/ngram_reference.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.lib import catalog  # noqa: E402
from tasks.lib.vocab import load_tokenizer, special_ids  # noqa: E402

WEIGHTS = (0.5, 0.6, 0.7, 0.8, 0.9)  # the bigram's share in the interpolation: one is chosen
CHUNK = 2048  # target positions scored at once by the two-sided model (CHUNK x vocabulary floats)


def counts(stream: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Unigram probabilities (add-0.5) and the row-normalised bigram matrix P(next | token)."""
    unigram = np.bincount(stream, minlength=vocab) + 0.5
    pairs = np.zeros((vocab, vocab), dtype=np.float32)
    np.add.at(pairs, (stream[:-1], stream[1:]), 1.0)
    rows = pairs.sum(1, keepdims=True)
    return unigram / unigram.sum(), np.divide(pairs, rows, out=np.zeros_like(pairs), where=rows > 0)


def left_bigram(stream, targets, unigram, bigram, weight: float) -> np.ndarray:
    """-log P(x | the token before) at the positions in `targets` (each > 0)."""
    before, x = stream[targets - 1], stream[targets]
    return -np.log(weight * bigram[before, x] + (1 - weight) * unigram[x])


def both_neighbours(stream, targets, unigram, bigram, weight: float, ordinary: np.ndarray) -> np.ndarray:
    """-log P(x | before, after), normalised over the ordinary tokens, at `targets` (inner positions)."""
    out = []
    for start in range(0, len(targets), CHUNK):
        t = targets[start : start + CHUNK]
        left = weight * bigram[stream[t - 1]] + (1 - weight) * unigram  # (n, vocab): P(x | before)
        right = weight * bigram[:, stream[t + 1]].T + (1 - weight) * unigram[stream[t + 1]][:, None]  # P(after | x)
        joint = left * right * ordinary
        out.append(-np.log(joint[np.arange(len(t)), stream[t]] / joint.sum(1)))
    return np.concatenate(out)


def validation_stream(data_dir: Path) -> np.ndarray:
    import datasets

    rows = datasets.load_from_disk(str(data_dir / "validation"))["input_ids"]
    return np.array([t for row in rows for t in row], dtype=np.int64)


def main() -> None:
    tokenizer = load_tokenizer(catalog.TOKENIZER_FILE)
    vocab, specials = tokenizer.get_vocab_size(), np.array(sorted(special_ids(tokenizer).values()))
    ordinary = ~np.isin(np.arange(vocab), specials)
    corpus = np.concatenate([np.load(f) for f in sorted(catalog.CORPUS_TOKENS.glob("*.npy"))])
    corpus = corpus.astype(np.int64)

    def inner_targets(stream):  # ordinary tokens with a neighbour on each side
        idx = np.arange(1, len(stream) - 1)
        return idx[ordinary[stream[idx]]]

    cut = len(corpus) * 9 // 10
    unigram, bigram = counts(corpus[:cut], vocab)
    held = inner_targets(corpus[cut:])
    weight = min(WEIGHTS, key=lambda w: left_bigram(corpus[cut:], held, unigram, bigram, w).mean())
    unigram, bigram = counts(corpus, vocab)
    stream = validation_stream(catalog.TOKENIZED)
    targets = inner_targets(stream)
    rows = {
        "unigram": float(-np.log(unigram[stream[targets]]).mean()),
        "left bigram": float(left_bigram(stream, targets, unigram, bigram, weight).mean()),
        "both neighbours (bigram counts)": float(
            both_neighbours(stream, targets, unigram, bigram, weight, ordinary).mean()
        ),
    }
    meta_file = catalog.PRETRAINED / catalog.META
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    print(f"corpus {len(corpus):,} tokens; validation {len(targets):,} target tokens; bigram weight {weight}")
    for name, loss in rows.items():
        print(f"  {name:34s} {loss:.3f} nats")
    if "val_loss" in meta:
        name = f"language model ({meta['objective']}, {meta['step']:,} steps)"
        print(f"  {name:34s} {meta['val_loss']:.3f} nats (its validation loss)")
    if "val_masked_loss" in meta:
        print(f"  {name:34s} {meta['val_masked_loss']:.3f} nats (at [MASK] positions only: like for like)")


if __name__ == "__main__":
    main()
