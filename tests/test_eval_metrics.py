"""Answer extraction and scoring against hand values (App. B protocol)."""

import pytest

from spiel.evaluate.metrics import bbh_extract, bbh_match, gsm_extract, gsm_match, max_f1, pass_at_k, token_f1


@pytest.mark.parametrize("output,expected", [
    ("She pays 3 * 4 = 12 dollars. So the answer is 12.", "12"),
    ("The total is 1,234,567 apples. So the answer is 1,234,567.", "1234567"),
    ("It costs $5.50 per kg, so 2 kg cost $11.00. So the answer is 11.00", "11.00"),
    ("The temperature drops to -7 degrees. So the answer is -7.", "-7"),
    ("No number here.", None),
])
def test_gsm_extract(output, expected):
    assert gsm_extract(output) == expected


def test_gsm_match_against_gold_with_hashes():
    assert gsm_match("So the answer is 1,800.", "Janet has ... #### 1800")
    assert gsm_match("So the answer is 11.00", "#### 11")
    assert not gsm_match("So the answer is 17.", "#### 18")
    assert not gsm_match("I don't know", "#### 18")


@pytest.mark.parametrize("output,expected", [
    ("Let's think step by step. ... So the answer is (B).", "(B)"),
    ("... So the answer is No.\n\nQ: next question", "No"),
    ("the answer is 3.5 apples. Then more.", "3.5 apples"),
    ("  (C)  ", "(C)"),
])
def test_bbh_extract(output, expected):
    assert bbh_extract(output) == expected


def test_bbh_match_option_letters():
    assert bbh_match("So the answer is (A).", "(A)")
    assert bbh_match("So the answer is A.", "(A)")
    assert not bbh_match("So the answer is (B).", "(A)")
    assert bbh_match("So the answer is valid.", "valid")
    assert not bbh_match("So the answer is invalid.", "valid")


def test_f1_normalisation_and_max_over_golds():
    assert token_f1("The Eiffel Tower!", "eiffel tower") == 1.0
    # pred tokens: [paris, france]; gold: [paris]; P = 1/2, R = 1 → F1 = 2/3
    assert token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert token_f1("London", "Paris") == 0.0
    assert max_f1("in Paris", ["London", "Paris"]) == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0


def test_pass_at_k_hand_values():
    assert pass_at_k(20, 0, 1) == 0.0
    assert pass_at_k(20, 5, 1) == pytest.approx(0.25)
    assert pass_at_k(20, 20, 1) == 1.0
    # 1 − C(3,2)/C(5,2) = 1 − 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
