import pytest

from neurorit.metrics import contains_answer, exact_match, normalize_answer, token_f1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat  sat.", "cat sat"),
        ("An apple, a pear!", "apple pear"),
        ("  Wilhelm   Conrad Röntgen ", "wilhelm conrad röntgen"),
        ("theatre", "theatre"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer_is_squad_style(text, expected):
    assert normalize_answer(text) == expected


def test_contains_answer_matches_any_normalized_alias():
    assert contains_answer("It was Jane Austen, in 1813.", ["Charlotte Brontë", "jane austen"])
    assert contains_answer("The answer is PARIS!", "Paris")  # a bare string is one alias, not letters
    assert not contains_answer("It was Charlotte Brontë.", ["Jane Austen", "Austen"])


def test_empty_alias_never_matches():
    assert not contains_answer("anything at all", ["", "  ", "the"])
    assert not exact_match("", ["", "a"])
    assert token_f1("the", ["the"]) == 0.0


def test_exact_match_after_normalization():
    assert exact_match("The Beatles.", ["beatles"])
    assert not exact_match("The Beatles were a band", ["beatles"])


def test_token_f1_hand_computed():
    # prediction tokens [cat, sat]; gold [cat, sat, down]: P = 2/2, R = 2/3, F1 = 2PR/(P+R) = 0.8
    assert token_f1("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    # [new, york, city] vs [new, york]: P = 2/3, R = 1, F1 = 0.8; vs [nyc]: 0 -> max is 0.8
    assert token_f1("New York City", ["NYC", "New York"]) == pytest.approx(0.8)
    # repeated tokens count once per gold occurrence: [a, a] -> [] after articles; use words
    # [paris, paris] vs [paris]: common 1, P = 1/2, R = 1, F1 = 2/3
    assert token_f1("paris paris", ["Paris"]) == pytest.approx(2 / 3)
    assert token_f1("Berlin", ["Paris"]) == 0.0
    assert token_f1("", ["Paris"]) == 0.0
