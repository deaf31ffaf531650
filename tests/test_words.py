"""analysis/words.py: word pieces joined into words, scores summed, unknown words named."""
import numpy as np
import pytest

from analysis.words import group_word_pieces, vocabulary_notice

TOKENS = ["[CLS]", "is", "the", "[UNK]", "w", "##e", "##a", "##r", "a", "h", "##a", "##t", "?", "[SEP]"]
SPECIAL = [True] + [False] * 12 + [True]


def test_pieces_join_into_words_with_summed_scores():
    scores = np.arange(len(TOKENS), dtype=float)  # 0..13
    w = group_word_pieces(TOKENS, scores, SPECIAL)
    assert w.words == ("[CLS]", "is", "the", "[UNK]", "wear", "a", "hat", "?", "[SEP]")
    # wear = 4+5+6+7, hat = 9+10+11
    np.testing.assert_allclose(w.scores, [0, 1, 2, 3, 22, 8, 30, 12, 13])
    assert w.pieces[4] == (4, 5, 6, 7) and w.pieces[6] == (9, 10, 11)
    assert w.special.tolist() == [True] + [False] * 7 + [True]
    assert w.unknown.tolist() == [False, False, False, True] + [False] * 5
    assert w.split == ["wear", "hat"]
    assert w.scores.sum() == pytest.approx(scores.sum())  # nothing lost or counted twice


def test_unknown_token_takes_the_questions_word_when_they_line_up():
    w = group_word_pieces(TOKENS, None, SPECIAL, question="is the zebra wear a hat?")
    assert w.words[3] == "zebra"
    notice = vocabulary_notice(w)
    assert "zebra" in notice and "wear, hat" in notice
    # no one-to-one alignment (one word more): the token stays [UNK]
    assert group_word_pieces(TOKENS, None, SPECIAL, question="is the big zebra wear a hat?").words[3] == "[UNK]"


def test_a_continuation_never_joins_a_special_token_and_known_words_give_no_notice():
    w = group_word_pieces(["[CLS]", "##x", "red", "[SEP]"], [1.0, 2.0, 3.0, 4.0], [True, False, False, True])
    assert w.words == ("[CLS]", "##x", "red", "[SEP]")
    assert vocabulary_notice(group_word_pieces(["[CLS]", "is", "red", "[SEP]"], None,
                                               [True, False, False, True])) is None


def test_lengths_must_agree():
    with pytest.raises(ValueError, match="3 tokens, 2 scores"):
        group_word_pieces(["a", "b", "c"], [1.0, 2.0])
