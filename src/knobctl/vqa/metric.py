"""VQAv2 accuracy, computed the way the official VQA evaluation computes it.

Why this module exists: VQA numbers are only comparable to published VQAv2
results if answers are normalised and scored exactly like the official
evaluation script (``vqaEval.py``) does it -- same punctuation quirks, same
number-word and article handling, same contraction table, and the same
leave-one-out "min(1, matches / 3)" consensus accuracy.  Anything looser
(plain exact match, lowercase-only, ...) yields numbers that cannot be put
next to the literature.

Deliberate differences from the official script, both documented below:

* The official script only runs punctuation processing on human answers (which
  ship pre-normalised) and only when they disagree.  Here the full
  normalisation is applied to the prediction and to every human answer, so
  raw, un-normalised answers from other datasets are handled consistently.
* Answer lists of any length >= 1 are accepted (the official data always has
  10); see :func:`vqa_score` for the single-answer rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["normalize_answer", "vqa_score", "vqa_scores"]

# Official contraction table.  Keys that contain capitals ("Im", "Ive", ...)
# can never match after lowercasing, and "somebody'd" maps the "wrong" way
# round; both quirks are kept on purpose so results match the official script.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Note: the official period regex's "(?!<=\d)" is a (harmless) typo for a
# lookbehind; it is kept verbatim so behaviour is identical.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)


def _process_punctuation(text: str) -> str:
    out = text
    has_digit_comma_digit = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        # The tests look at the *original* text, as the official script does.
        if (p + " " in text or " " + p in text) or has_digit_comma_digit:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Normalise one answer exactly as the official VQAv2 evaluation does.

    Steps: newlines/tabs become spaces and the text is stripped; punctuation
    from the official list is deleted if it touches a space anywhere in the
    answer (or the answer contains a digit-comma-digit such as ``1,000``),
    otherwise replaced by a space; periods not followed by a digit are removed;
    then the answer is lowercased, number words ``none``/``zero``..``ten``
    become digits, the articles ``a``/``an``/``the`` are dropped, and the
    official contraction table is applied word by word.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against the human answers.

    Prediction and answers are normalised with :func:`normalize_answer`.  For
    ``n >= 2`` answers this is the official leave-one-out consensus score: for
    each ``i``, drop answer ``i`` and take ``min(1, matches / 3)`` over the
    remaining ``n - 1`` answers; return the mean over ``i``.  With the usual
    10 answers this is exactly the published VQAv2 formula.

    With a single answer (``n == 1``, e.g. easy-VQA style datasets) the
    leave-one-out subset would be empty, so the score is defined as plain
    exact match after normalisation: 1.0 if equal, else 0.0.

    Raises:
        ValueError: if ``answers`` is empty (a question needs at least one
            human answer).
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single str")
    n = len(answers)
    if n == 0:
        raise ValueError(
            "answers is empty: a question needs at least one human answer to be scored"
        )
    pred = normalize_answer(prediction)
    matches = [normalize_answer(a) == pred for a in answers]
    if n == 1:
        return 1.0 if matches[0] else 0.0
    total = sum(matches)
    return sum(min(1.0, (total - int(m)) / 3.0) for m in matches) / n


def vqa_scores(
    predictions: Sequence[str], answers_lists: Sequence[Sequence[str]]
) -> list[float]:
    """Per-question :func:`vqa_score` for parallel lists of predictions/answers.

    Raises:
        ValueError: if the two sequences have different lengths, or any
            question has no answers.
    """
    if len(predictions) != len(answers_lists):
        raise ValueError(
            f"predictions and answers_lists differ in length: "
            f"{len(predictions)} predictions vs {len(answers_lists)} answer lists"
        )
    return [vqa_score(p, a) for p, a in zip(predictions, answers_lists)]
