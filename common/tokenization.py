"""WordPiece vocabularies and a BERT tokenizer with Google BERT's `tokenization.py` semantics.

The tokenizer is pure Python because `keras_hub.tokenizers.WordPieceTokenizer` differs from
Google BERT in details that change ids: it case-folds (NFKC, "Straße" -> "strasse") instead of
`str.lower`, ties accent stripping to its own flag rather than to lower-casing ("Café" -> [UNK]
with lowercase=True alone), and splits words on Cc/Cf characters that Google deletes ("a\u200bb").

Pipeline (Google order): drop NUL / U+FFFD / control characters and map whitespace to " ",
surround every CJK ideograph with spaces, split on whitespace, lower-case and strip accents
(NFD, drop Mn) when `lowercase`, split off every punctuation character, then greedy
longest-match-first WordPiece with "##" continuation pieces.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import unicodedata
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from common import io_utils
from common.io_utils import atomic_write_text, read_json

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
# Reserved tokens put first, in this order, by the vocabulary builders below.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
CONTINUATION_PREFIX = "##"
# Google's padding id: the encoder's `input_ids` pad with 0 whatever token sits there.
PADDING_ID = 0


class VocabError(ValueError):
    """A vocabulary that cannot be used; the message names the file and line where there is one."""


# ---- vocabulary files -------------------------------------------------------------------------

def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """Reads `vocab.txt` (one token a line, id = 0-based line index) into an ordered token -> id dict."""
    path = os.fspath(path)
    with io_utils.open_file(path, "rb") as handle:  # local or tf.io.gfile (gs://)
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_number = raw.count(b"\n", 0, error.start) + 1
        raise VocabError(f"{path}:{line_number}: not valid UTF-8 ({error.reason})") from None
    if not text.strip():
        raise VocabError(f"{path}: vocabulary file is empty")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another one
    vocab: dict[str, int] = {}
    for index, line in enumerate(lines):
        # Google strips each line, so surrounding whitespace (and "\r" of CRLF files) is not part of a token.
        token = line.strip()
        if not token:
            raise VocabError(f"{path}:{index + 1}: empty line (every line must hold one token)")
        if token in vocab:
            raise VocabError(f"{path}:{index + 1}: duplicate token {token!r} "
                             f"(first on line {vocab[token] + 1})")
        vocab[token] = index
    return vocab


def _check_tokens(tokens: Sequence[str], source: str) -> None:
    """Raises `VocabError` for tokens that would not read back as the same vocabulary."""
    first_index: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if not isinstance(token, str) or not token or token != token.strip() or "\n" in token:
            raise VocabError(f"{source}: token {index} ({token!r}) must be a non-empty string "
                             "without surrounding whitespace or newlines")
        if token in first_index:
            raise VocabError(f"{source}: duplicate token {token!r} at index {index} "
                             f"(first at index {first_index[token]})")
        first_index[token] = index


def write_vocab(tokens: Sequence[str], path: str | os.PathLike) -> None:
    """Writes `tokens` one a line, atomically; checks first so a bad list leaves no file behind."""
    tokens = list(tokens)
    if not tokens:
        raise VocabError(f"{os.fspath(path)}: refusing to write an empty vocabulary")
    _check_tokens(tokens, os.fspath(path))
    atomic_write_text(path, "".join(token + "\n" for token in tokens))


# ---- character classes (Google BERT definitions) ----------------------------------------------

def _is_whitespace(char: str) -> bool:
    # Tab, newline and carriage return are Cc, but Google treats them as whitespace, not control.
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    code_point = ord(char)
    # All non-alphanumeric printable ASCII counts, e.g. "$", "^", "`", which Unicode files under S*.
    if 33 <= code_point <= 47 or 58 <= code_point <= 64 or 91 <= code_point <= 96 or 123 <= code_point <= 126:
        return True
    return unicodedata.category(char).startswith("P")


# CJK Unified Ideograph blocks that Google splits into single characters (not Hangul or kana).
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def is_cjk_character(char: str) -> bool:
    code_point = ord(char)
    return any(low <= code_point <= high for low, high in _CJK_RANGES)


# ---- tokenizers ---------------------------------------------------------------------------------

class BasicTokenizer:
    """Text -> words and punctuation marks: cleanup, CJK split, lower-case/accent strip, punctuation split.

    `tokenize_chinese_chars=False` keeps CJK ideographs inside their whitespace-separated words (Google's
    and Hugging Face's switch of that name): pre-segmented Japanese `一般 道路` stays `一般`, `道路`.
    """

    def __init__(self, lowercase: bool = True, strip_accents: bool | None = None, tokenize_chinese_chars: bool = True):
        self.lowercase = lowercase
        # As in Hugging Face's BertTokenizer: None means "strip accents exactly when lower-casing".
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars

    def tokenize(self, text: str) -> list[str]:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        text = self._clean_and_space_cjk(text)
        words = []
        for word in text.split():
            if self.lowercase:
                word = word.lower()
            if self.strip_accents:
                word = _strip_accents(word)
            words.extend(_split_on_punctuation(word))
        return words

    def _clean_and_space_cjk(self, text: str) -> str:
        pieces = []
        split_cjk = self.tokenize_chinese_chars
        for char in text:
            if char == "\x00" or char == "\ufffd" or _is_control(char):
                continue
            if _is_whitespace(char):
                pieces.append(" ")
            elif split_cjk and is_cjk_character(char):
                pieces.append(f" {char} ")
            else:
                pieces.append(char)
        return "".join(pieces)


def _strip_accents(word: str) -> str:
    # NFD separates base letters from combining marks (category Mn), which are then dropped.
    return "".join(char for char in unicodedata.normalize("NFD", word)
                   if unicodedata.category(char) != "Mn")


def _split_on_punctuation(word: str) -> list[str]:
    pieces: list[str] = []
    current = []
    for char in word:
        if _is_punctuation(char):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(char)
        else:
            current.append(char)
    if current:
        pieces.append("".join(current))
    return pieces


class WordpieceTokenizer:
    """Word -> greedy longest-match-first pieces; "##" marks pieces that continue a word."""

    def __init__(self, vocab: Mapping[str, int], unk_token: str = UNK_TOKEN,
                 max_input_chars_per_word: int = 100):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word

    def tokenize_word(self, word: str) -> list[str]:
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces = []
        start = 0
        while start < len(word):
            # Try the longest remaining substring first, shrinking from the right until a piece matches.
            for end in range(len(word), start, -1):
                candidate = word[start:end] if start == 0 else CONTINUATION_PREFIX + word[start:end]
                if candidate in self.vocab:
                    pieces.append(candidate)
                    start = end
                    break
            else:
                return [self.unk_token]  # some part has no piece, so the whole word is unknown
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [piece for word in text.split() for piece in self.tokenize_word(word)]


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """Google's `_truncate_seq_pair`: in place, pop the last token of the longer list (b on ties)."""
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


_ASCII_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # removed by cleaning (not \t \n \r)
_ASCII_WORD_OR_PUNCTUATION = re.compile("[!-/:-@\\[-`{-~]|[^!-/:-@\\[-`{-~]+")  # Google's ASCII punctuation
_WORD_CACHE_SIZE = 200_000  # words whose pieces a tokenizer remembers (tokenization is per word)


class BertTokenizer:
    """Google BERT `FullTokenizer` plus model encoding: text -> wordpieces -> ids -> fixed-length features."""

    def __init__(self, vocab: Mapping[str, int] | Sequence[str], lowercase: bool = True,
                 strip_accents: bool | None = None, unk_token: str = UNK_TOKEN,
                 cls_token: str = CLS_TOKEN, sep_token: str = SEP_TOKEN,
                 max_input_chars_per_word: int = 100, tokenize_chinese_chars: bool = True):
        if isinstance(vocab, Mapping):
            self.vocab = dict(vocab)
        else:
            tokens = list(vocab)
            _check_tokens(tokens, "vocabulary list")
            self.vocab = {token: index for index, token in enumerate(tokens)}
        if not self.vocab:
            raise VocabError("vocabulary is empty")
        for role, token in (("unk_token", unk_token), ("cls_token", cls_token), ("sep_token", sep_token)):
            if token not in self.vocab:
                raise VocabError(f"{role} {token!r} is not in the vocabulary")
        self.inverse_vocab = {index: token for token, index in self.vocab.items()}
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.basic_tokenizer = BasicTokenizer(lowercase=lowercase, strip_accents=strip_accents,
                                              tokenize_chinese_chars=tokenize_chinese_chars)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab, unk_token, max_input_chars_per_word)

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, lowercase: bool = True, **kwargs) -> "BertTokenizer":
        return cls(load_vocab(path), lowercase=lowercase, **kwargs)

    @classmethod
    def from_pretrained_dir(cls, folder: str | os.PathLike, lowercase: bool | None = None) -> "BertTokenizer":
        """A Google or Hugging Face BERT folder: `vocab.txt` plus, if present, `tokenizer_config.json`.

        `do_lower_case`, `strip_accents`, `tokenize_chinese_chars` and the special token names come from
        `tokenizer_config.json`;
        without it (Google checkpoints) the default is lower-casing, unless `lowercase` is given.
        """
        folder = os.fspath(folder)
        vocab_path = io_utils.join(folder, "vocab.txt")
        if not io_utils.isfile(vocab_path):
            raise VocabError(f"{vocab_path}: no vocabulary file in {folder}")
        settings = _read_tokenizer_config(io_utils.join(folder, "tokenizer_config.json"))
        if lowercase is None:
            lowercase = settings.get("do_lower_case", True)
        special = {role: settings[role] for role in ("unk_token", "cls_token", "sep_token")
                   if isinstance(settings.get(role), str)}
        return cls(load_vocab(vocab_path), lowercase=bool(lowercase), strip_accents=settings.get("strip_accents"),
                   tokenize_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)), **special)

    def replace(self, **options) -> "BertTokenizer":
        """A tokenizer over the same vocabulary with some constructor options changed, e.g.
        `replace(tokenize_chinese_chars=False)`."""
        settings = dict(lowercase=self.lowercase, strip_accents=self.basic_tokenizer.strip_accents,
                        unk_token=self.unk_token, cls_token=self.cls_token, sep_token=self.sep_token,
                        max_input_chars_per_word=self.wordpiece_tokenizer.max_input_chars_per_word,
                        tokenize_chinese_chars=self.tokenize_chinese_chars)
        unknown = set(options) - set(settings)
        if unknown:
            raise TypeError(f"unknown tokenizer options {sorted(unknown)}")
        return BertTokenizer(self.vocab, **{**settings, **options})

    # ---- tokens and ids -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def lowercase(self) -> bool:
        return self.basic_tokenizer.lowercase

    @property
    def tokenize_chinese_chars(self) -> bool:
        return self.basic_tokenizer.tokenize_chinese_chars

    def tokenize(self, text: str) -> list[str]:
        """Text -> wordpiece strings (no [CLS]/[SEP])."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        # Cleaning maps characters one by one, so every whitespace-separated word can be tokenized alone, and
        # cached; printable ASCII (and whitespace) needs no cleaning at all.
        if text.isascii() and not _ASCII_CONTROL.search(text):
            words = text.split()
        else:
            words = self.basic_tokenizer._clean_and_space_cjk(text).split()
        cache = self.__dict__.setdefault("_word_pieces", {})
        word_pieces = list(map(cache.get, words))
        if None in word_pieces:
            for index, word in enumerate(words):
                if word_pieces[index] is None:
                    word_pieces[index] = self._tokenize_word(word)
                    if len(cache) < _WORD_CACHE_SIZE:
                        cache[word] = word_pieces[index]
        return list(itertools.chain.from_iterable(word_pieces))

    def _tokenize_word(self, word: str) -> list[str]:
        """Wordpieces of one whitespace-free word of cleaned text."""
        if word.isascii():  # no accents to strip; punctuation is every non-alphanumeric character
            basic_words = _ASCII_WORD_OR_PUNCTUATION.findall(word.lower() if self.lowercase else word)
        else:
            basic_words = self.basic_tokenizer.tokenize(word)
        return [piece for basic_word in basic_words for piece in self.wordpiece_tokenizer.tokenize_word(basic_word)]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        unk_id = self.vocab[self.unk_token]
        return [self.vocab.get(token, unk_id) for token in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        tokens = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id not in self.inverse_vocab:
                raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
            tokens.append(self.inverse_vocab[token_id])
        return tokens

    def __call__(self, text: str) -> list[int]:
        """Text -> wordpiece ids."""
        return self.convert_tokens_to_ids(self.tokenize(text))

    # ---- model features -------------------------------------------------------------------------

    def encode(self, text_a: str, text_b: str | None = None, max_seq_length: int = 128) -> dict[str, list[int]]:
        """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, truncated and zero-padded to `max_seq_length`."""
        tokens_a = self.tokenize(text_a)
        tokens_b = None if text_b is None else self.tokenize(text_b)
        return self.encode_tokens(tokens_a, tokens_b, max_seq_length)

    def encode_tokens(self, tokens_a: Sequence[str], tokens_b: Sequence[str] | None = None,
                      max_seq_length: int = 128) -> dict[str, list[int]]:
        """As `encode`, from wordpiece strings already tokenized."""
        special_count = 2 if tokens_b is None else 3
        if max_seq_length < special_count:
            raise ValueError(f"max_seq_length={max_seq_length} leaves no room for the "
                             f"{special_count} [CLS]/[SEP] tokens")
        tokens_a = list(tokens_a)
        if tokens_b is None:
            del tokens_a[max_seq_length - special_count:]
            tokens_b = []
            segment_b = []
        else:
            tokens_b = list(tokens_b)
            truncate_seq_pair(tokens_a, tokens_b, max_seq_length - special_count)
            segment_b = [1] * (len(tokens_b) + 1)  # b and the [SEP] after it
            tokens_b = tokens_b + [self.sep_token]
        tokens = [self.cls_token] + tokens_a + [self.sep_token] + tokens_b
        segment_ids = [0] * (len(tokens_a) + 2) + segment_b
        padding = max_seq_length - len(tokens)
        return {
            "input_ids": self.convert_tokens_to_ids(tokens) + [PADDING_ID] * padding,
            "input_mask": [1] * len(tokens) + [0] * padding,
            "segment_ids": segment_ids + [0] * padding,
        }

    def encode_batch(self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None,
                     max_seq_length: int = 128) -> dict[str, np.ndarray]:
        """`encode` for each row -> int32 arrays `[batch, max_seq_length]`; a None in `texts_b` means no b."""
        texts_a = list(texts_a)
        if texts_b is None:
            texts_b = [None] * len(texts_a)
        texts_b = list(texts_b)
        if len(texts_b) != len(texts_a):
            raise ValueError(f"texts_a has {len(texts_a)} rows but texts_b has {len(texts_b)}")
        features = {key: np.zeros((len(texts_a), max_seq_length), dtype=np.int32)
                    for key in ("input_ids", "input_mask", "segment_ids")}
        for row, (text_a, text_b) in enumerate(zip(texts_a, texts_b)):
            for key, values in self.encode(text_a, text_b, max_seq_length).items():
                features[key][row] = values
        return features

    def encode_dataset(self, texts_a: Sequence[str], texts_b: Sequence[str | None] | None = None,
                       max_seq_length: int = 128):
        """A `tf.data.Dataset` of feature dicts (int32 `[max_seq_length]`), encoded lazily as it is read."""
        import tensorflow as tf  # imported here so plain-Python users do not pay for TensorFlow

        if texts_b is not None and len(texts_b) != len(texts_a):
            raise ValueError(f"texts_a has {len(texts_a)} rows but texts_b has {len(texts_b)}")

        def generate():
            for row, text_a in enumerate(texts_a):
                text_b = None if texts_b is None else texts_b[row]
                features = self.encode(text_a, text_b, max_seq_length)
                yield {key: np.asarray(values, dtype=np.int32) for key, values in features.items()}

        spec = tf.TensorSpec([max_seq_length], tf.int32)
        return tf.data.Dataset.from_generator(
            generate, output_signature={"input_ids": spec, "input_mask": spec, "segment_ids": spec})


def _read_tokenizer_config(path: str) -> dict:
    if not io_utils.isfile(path):
        return {}
    return read_json(path, expect=dict)


# ---- vocabularies from a corpus -----------------------------------------------------------------

def iter_file_lines(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Lines of UTF-8 text files, without their line ends; bad bytes raise naming file and line."""
    for path in paths:
        path = os.fspath(path)
        with io_utils.open_file(path, "rb") as handle:
            for line_number, raw_line in enumerate(handle, start=1):
                try:
                    yield raw_line.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: not valid UTF-8 ({error.reason})") from None


def _corpus_lines(lines: Iterable[str] | None, files: Iterable[str | os.PathLike] | None) -> Iterable[str]:
    if (lines is None) == (files is None):
        raise ValueError("give exactly one of `lines` (an iterable of text lines) or `files` (text file paths)")
    if isinstance(lines, (str, bytes)) or isinstance(files, (str, bytes, os.PathLike)):
        raise ValueError("`lines`/`files` must be an iterable of strings, not a single string")
    return lines if lines is not None else iter_file_lines(files)


def count_words(lines: Iterable[str], lowercase: bool = True, tokenize_chinese_chars: bool = True
                ) -> collections.Counter:
    """Word frequencies after BERT's basic tokenization (CJK characters, unless switched off, and
    punctuation are words)."""
    basic_tokenizer = BasicTokenizer(lowercase=lowercase, tokenize_chinese_chars=tokenize_chinese_chars)
    counts: collections.Counter = collections.Counter()
    for line in lines:
        counts.update(basic_tokenizer.tokenize(line))
    return counts


def compute_wordpiece_vocabulary(vocab_size: int, lines: Iterable[str] | None = None,
                                 files: Iterable[str | os.PathLike] | None = None, lowercase: bool = True,
                                 tokenize_chinese_chars: bool = True,
                                 special_tokens: Sequence[str] = SPECIAL_TOKENS,
                                 output_path: str | os.PathLike | None = None) -> list[str]:
    """WordPiece vocabulary of at most `vocab_size` tokens, `special_tokens` first.

    Words come from this module's `BasicTokenizer`, so the vocabulary matches what `BertTokenizer`
    will look up; pieces are learnt by the tensorflow-text learner that
    `keras_hub.tokenizers.compute_word_piece_vocabulary` wraps, fed the counts directly (sorted, so
    the result does not depend on line order) to skip its differing pre-tokenization. As in
    keras-hub, a learnt list longer than `vocab_size` (an alphabet too large for it) is cut at the
    end, which drops "##" single characters first; leave room for about twice the alphabet.
    """
    special_tokens = list(special_tokens)
    if vocab_size <= len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beside {len(special_tokens)} special tokens")
    counts = count_words(_corpus_lines(lines, files), lowercase=lowercase,
                         tokenize_chinese_chars=tokenize_chinese_chars)
    for token in special_tokens:
        counts.pop(token, None)
    if not counts:
        raise ValueError("the corpus holds no words to build a vocabulary from")
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

    vocab = learner.learn(sorted(counts.items()), vocab_size=vocab_size, reserved_tokens=special_tokens,
                          include_joiner_token=True, joiner=CONTINUATION_PREFIX)[:vocab_size]
    if output_path is not None:
        write_vocab(vocab, output_path)
    return vocab


def compute_char_vocabulary(lines: Iterable[str] | None = None, files: Iterable[str | os.PathLike] | None = None,
                            vocab_size: int | None = None, min_count: int = 1, lowercase: bool = True,
                            special_tokens: Sequence[str] = SPECIAL_TOKENS,
                            output_path: str | os.PathLike | None = None) -> list[str]:
    """Character/whole-word vocabulary for CJK corpora (e.g. danmaku, one comment a line).

    Every CJK character, punctuation mark and non-CJK word is one token. Tokens seen at least
    `min_count` times are kept, most frequent first, ties broken by code-point order, after
    `special_tokens`; `vocab_size` (special tokens included) caps the total.
    """
    special_tokens = list(special_tokens)
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    if vocab_size is not None and vocab_size <= len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beside {len(special_tokens)} special tokens")
    counts = count_words(_corpus_lines(lines, files), lowercase=lowercase)
    for token in special_tokens:
        counts.pop(token, None)
    ranked = sorted((item for item in counts.items() if item[1] >= min_count),
                    key=lambda item: (-item[1], item[0]))
    vocab = special_tokens + [token for token, _ in ranked]
    if vocab_size is not None:
        vocab = vocab[:vocab_size]
    if output_path is not None:
        write_vocab(vocab, output_path)
    return vocab
