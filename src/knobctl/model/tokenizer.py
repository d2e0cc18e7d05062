"""Word-level tokenizers for knobctl's own models, built with the ``tokenizers`` library.

easy-VQA's questions and answers use a few dozen words; a word-level vocabulary
keeps every answer a single token, so the tiny model's greedy answer is one step
plus an end token. The tokenizer is saved as ``tokenizer.json`` beside the weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from knobctl.model.spec import BOS, EOS, IMAGE, PAD, SEP, SPECIAL_TOKENS, UNK


def words_of(texts: Iterable[str]) -> Counter[str]:
    """Word counts under the tokenizer's own normalisation and splitting."""
    norm = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return counts


def build_word_tokenizer(texts: Iterable[str], min_count: int = 1) -> PreTrainedTokenizerFast:
    """A lowercase word-level tokenizer over ``texts``; special tokens take ids 0..5."""
    counts = words_of(texts)
    words = sorted(w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab[w] = len(vocab)
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        sep_token=SEP,
        additional_special_tokens=[IMAGE],
        padding_side="left",
    )
