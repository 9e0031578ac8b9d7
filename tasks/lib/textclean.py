"""Text repair and the normalisation used to find duplicates across splits."""

from __future__ import annotations

import html
import re
import unicodedata

import ftfy

# ftfy's decoding is only trusted when it yields Latin text: on byte soup it can "repair"
# into Armenian or Cyrillic letters that were never there.
_PLAUSIBLE = re.compile(r"^[\x00-\x7f\xa0-\xff\u2000-\u206f\u20ac]*$")
# Two or more Latin-1/C1 characters in a row (underscores between them allowed) is the
# residue of an encoding round trip that no codec reverses; real text rarely has it.
_RESIDUE = re.compile(r"_?(?:[\x80-\xff]_?){2,}")
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"  # also a quarantine rule (tasks/lib/contract.py)
_CONTROL = re.compile(CONTROL_CHARS)
_SPACE = re.compile(r"\s+")
# Numeric entities whose ampersand became a space on the way ("It #39;s" in AG News).
_BARE_ENTITY = re.compile(r"(?:(?<=\w) ?|(?<![&\w]))#(\d{2,4});")
_NON_WORD = re.compile(r"[\W_]+")
# What makes two copies of one tweet differ: who is named, which link shortener, a retweet prefix.
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"@\w+")
_RETWEET = re.compile(r"\brt\s+@\w+\s*:?", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Unescape HTML, repair standard mojibake, drop irrecoverable byte runs and controls."""
    text = html.unescape(_BARE_ENTITY.sub(lambda m: chr(int(m.group(1))), text))
    repaired = ftfy.fix_encoding(text)
    if repaired != text and _PLAUSIBLE.match(repaired):
        text = repaired
    text = _CONTROL.sub("", _RESIDUE.sub("", text))
    return _SPACE.sub(" ", text).strip()


def normalise(text: str) -> str:
    """Key under which two texts count as the same: case, punctuation and spacing ignored."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _NON_WORD.sub(" ", text)).strip()


def leak_keys(text: str) -> list[str]:
    """Keys under which a text may be a copy of another: `normalise`d after links become
    "http", usernames "@user" and retweet prefixes ("RT @name:") go; then, for each retweet
    inside the text, the key of what follows it (a short tweet quoted with a comment)."""
    parts = _RETWEET.split(_URL.sub(" http ", text))
    keys = [_masked(" ".join(parts))] + [_masked(p) for p in parts[1:]]
    return [k for k in dict.fromkeys(keys) if k]


def _masked(text: str) -> str:
    return normalise(_MENTION.sub(" @user ", text))
