from tasks.lib.textclean import clean_text, normalise


def test_clean_repairs_standard_mojibake_and_html():
    assert clean_text("cafÃ© &amp; bar") == "café & bar"
    assert clean_text("Thatâ€™s it") == "That’s it"
    assert clean_text("It #39;s over, #1 fan") == "It's over, #1 fan"


def test_clean_drops_irrecoverable_byte_runs_but_keeps_real_accents():
    # A run seen in the default corpus: bytes from a broken round trip no codec reverses.
    assert clean_text("I don\xd5\xa2_\x8a\xce_\x86\xa2t want") == "I dont want"
    assert clean_text("naïve café") == "naïve café"


def test_clean_collapses_space_and_controls():
    assert clean_text("  a\t\x07b \n c ") == "a b c"


def test_normalise_ignores_case_punctuation_and_spacing():
    assert normalise("Great   flight!!") == normalise("great flight") == "great flight"
    assert normalise("great flight") != normalise("great fight")
