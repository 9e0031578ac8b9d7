"""The rules a corpus text passes before pretraining sees it (tasks/lib/corpus.py)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tasks.lib.corpus import (
    CONTAINS_HELD_OUT,
    DAMAGED,
    EQUALS_HELD_OUT,
    EXACT_DUPLICATE,
    MASKED_HELD_OUT,
    NEAR_DUPLICATE,
    SHORT,
    HeldOut,
    Seen,
    accepted,
)
from tasks.lib.sources import DEFAULT_DATA_ROOT
from tasks.lib.textclean import clean_text, normalise

HELD = ["What a truly wonderful film this was for everyone involved", "bad ."]


def run(texts, min_chars=5, held=HELD):
    counts = Counter()
    kept = list(accepted(texts, HeldOut(held, min_words=8), Seen(), counts, min_chars))
    return kept, counts


def test_each_rule_drops_and_counts():
    kept, counts = run([
        "a fine corpus sentence",
        "a fine corpus sentence",  # exact repeat
        "A fine, corpus sentence!",  # the same after normalisation
        "tiny",
        "broken \ufffd bytes here",
        "BAD .",  # equals a held-out text (short ones count only when equal)
        "i said: what a truly wonderful film this was for everyone involved, really",
        "a review that is bad . but long enough",  # contains only a short held-out text: kept
    ])  # fmt: skip
    assert kept == ["a fine corpus sentence", "a review that is bad . but long enough"]
    assert counts[EXACT_DUPLICATE] == counts[NEAR_DUPLICATE] == counts[SHORT] == counts[DAMAGED] == 1
    assert counts[EQUALS_HELD_OUT] == counts[CONTAINS_HELD_OUT] == 1
    assert counts["read"] == 8 and counts["kept"] == 2


def test_containment_needs_whole_words():
    kept, counts = run(["xwhat a truly wonderful film this was for everyone involved"], held=HELD)
    assert kept and not counts[CONTAINS_HELD_OUT]


def test_retweets_and_copies_with_other_usernames_or_links_of_a_held_out_text_are_dropped():
    held = ["@united lost my bag again", "so happy today http://t.co/abc", "great crew"]
    kept, counts = run([
        "RT @someone: @united lost my bag again",  # a retweet of a short test tweet
        "@delta lost my bag again",  # the same tweet to another user
        "so happy today https://bit.ly/xyz",  # another short link
        "ha! RT @fan: great crew",  # a short test tweet quoted under a comment
        "lost my bag again",  # no username: another text
        "great crew on board",
    ], held=held)  # fmt: skip
    assert kept == ["lost my bag again", "great crew on board"]
    assert counts[MASKED_HELD_OUT] == 4 and not counts[EQUALS_HELD_OUT]


DATA = Path(os.environ.get("DATA_ROOT", DEFAULT_DATA_ROOT))


@pytest.mark.skipif(not (DATA / "subj").exists(), reason="the shared datasets are not beside the repository")
def test_no_sst2_test_or_dev_sentence_reaches_pretraining_from_subj():
    """subj.subjective holds several hundred of SST-2's test and dev sentences (MANIFEST.md)."""
    held = []
    for name in ("stsa.binary.dev", "stsa.binary.test"):
        lines = (DATA / "sst2" / name).read_text(encoding="utf-8", errors="replace").splitlines()
        held += [clean_text(line.split(" ", 1)[1]) for line in lines if " " in line]
    corpus = []
    for name in ("subj.subjective", "subj.objective"):
        corpus += (DATA / "subj" / name).read_text(encoding="utf-8", errors="replace").splitlines()
    counts = Counter()
    kept = list(accepted(corpus, HeldOut(held, min_words=8), Seen(), counts, min_chars=1))
    assert counts[EQUALS_HELD_OUT] >= 400 and counts[CONTAINS_HELD_OUT] > 0
    keys = {normalise(t) for t in held}
    long_keys = [f" {k} " for k in keys if len(k.split()) >= 8]
    for text in kept:  # brute force, independent of the automaton
        key = normalise(text)
        assert key not in keys
        assert not any(k in f" {key} " for k in long_keys), text
