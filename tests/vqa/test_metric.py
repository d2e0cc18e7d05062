"""Hand-worked checks of the VQAv2 answer normalisation and accuracy."""

from __future__ import annotations

import pytest

from knobctl.vqa.metric import normalize_answer, vqa_score, vqa_scores


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("ten", "10"),
        ("a dog", "dog"),
        ("The Cat", "cat"),
        ("an apple", "apple"),
        ("  The\tCat\n", "cat"),
        ("yes.", "yes"),
        ("Yes!!!", "yes"),
        ("hello!", "hello"),  # "!" touches no space -> becomes a space -> stripped
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("whats", "what's"),
        ("youre", "you're"),
        ("What's", "what's"),  # apostrophe is not in the punctuation list
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted outright
        ("1,000,000", "1000000"),
        ("red, white", "red white"),  # ", " present: comma deleted
        ("red,white", "red white"),  # comma touches no space: replaced by space
        ("t-shirt", "t shirt"),
        ("3.5", "3.5"),  # period followed by a digit is kept
        ("Mr. Smith", "mr smith"),
        ("the", ""),
        ("Red", "red"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # all ten agree
        ("Two", ["2"] * 10, 1.0),
        # 2 matches: drop a match (2 subsets) -> 1/3, drop other (8) -> 2/3
        ("two", ["2"] * 2 + ["3"] * 8, (2 * (1 / 3) + 8 * (2 / 3)) / 10),
        ("two", ["2"] * 2 + ["3"] * 8, 0.6),
        # 3 matches: drop a match (3) -> 2/3, drop other (7) -> 1
        ("cat", ["cat"] * 3 + ["dog"] * 7, 0.9),
        # 4 matches: every subset still has >= 3 matches
        ("cat", ["cat"] * 4 + ["dog"] * 6, 1.0),
        # 1 match: drop it (1) -> 0, drop other (9) -> 1/3
        ("cat", ["cat"] + ["dog"] * 9, 0.3),
        ("a dog", ["dog"] * 10, 1.0),
        ("yes.", ["yes"] * 10, 1.0),
        ("dont", ["don't"] * 10, 1.0),
        ("three", ["3"] * 10, 1.0),
        ("Red", ["red"] * 10, 1.0),
        ("1,000", ["1000"] * 10, 1.0),
        ("1000", ["1,000"] * 10, 1.0),
        ("blue", ["red"] * 10, 0.0),
        # single-answer datasets: plain exact match after normalisation
        ("Yes", ["yes"], 1.0),
        ("the Circle.", ["circle"], 1.0),
        ("no", ["yes"], 0.0),
        # two answers, both match: each leave-one-out subset has 1 match -> 1/3
        ("yes", ["yes", "yes"], 1 / 3),
    ],
)
def test_vqa_score(prediction: str, answers: list[str], expected: float) -> None:
    assert vqa_score(prediction, answers) == pytest.approx(expected)


def test_vqa_score_empty_answers_raises() -> None:
    with pytest.raises(ValueError, match="answers is empty.*at least one human answer"):
        vqa_score("yes", [])


def test_vqa_scores_vectorised() -> None:
    got = vqa_scores(["two", "blue", "yes"], [["2"] * 2 + ["3"] * 8, ["red"] * 10, ["yes"]])
    assert got == pytest.approx([0.6, 0.0, 1.0])
    assert vqa_scores([], []) == []


def test_vqa_scores_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"2 predictions vs 1 answer lists"):
        vqa_scores(["a", "b"], [["a"]])
