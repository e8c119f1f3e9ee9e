"""label<TAB>text reading: clear errors naming file and line, labels, from-scratch vocabularies."""

import pytest

from bert_dml.data import (build_vocabulary, collect_labels, encode_texts, label_ids, read_label_file,
                           read_labeled_texts)
from common.cli import UserError
from common.tokenization import BertTokenizer


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_reads_labels_texts_and_line_numbers(tmp_path):
    path = write(tmp_path / "a.txt", "1\tgood . . . fun\n\n0\tbad\r\n1\tok\n".encode())
    data = read_labeled_texts(path)
    assert data.labels == ["1", "0", "1"] and data.line_numbers == [1, 3, 4]
    assert data.texts[0] == "good \u2026 fun"  # the original's ellipsis replacement
    assert collect_labels(data) == ["1", "0"]
    assert label_ids(data, ["0", "1"]).tolist() == [1, 0, 1]


def test_non_utf8_file_names_the_line_and_suggests_encoding(tmp_path):
    path = write(tmp_path / "rt.txt", "0\tfine\n1\tit's a caf\u00e9 \u2013 nice\n".encode("cp1252"))
    with pytest.raises(UserError, match=r"rt\.txt:2: not valid utf-8 .*--encoding.*cp1252"):
        read_labeled_texts(path)
    assert read_labeled_texts(path, encoding="cp1252").texts[1] == "it's a caf\u00e9 \u2013 nice"
    with pytest.raises(UserError, match="unknown --encoding"):
        read_labeled_texts(path, encoding="no-such-codec")


@pytest.mark.parametrize("content, message", [
    (b"0\tok\njust text without a tab\n", r"bad\.txt:2: no tab"),
    (b"0\tok\n\tno label\n", r"bad\.txt:2: empty label"),
    (b"0\tok\n1\t\n", r"bad\.txt:2: empty text"),
    (b"0\tok\n1\ttwo\ttabs\n", r"bad\.txt:2: more than one tab"),
    (b"\n\n", r"bad\.txt: no 'label<TAB>text' lines"),
])
def test_malformed_lines_give_one_clear_error(tmp_path, content, message):
    with pytest.raises(UserError, match=message):
        read_labeled_texts(write(tmp_path / "bad.txt", content))


def test_unknown_eval_label_is_an_error_for_the_classifier(tmp_path):
    data = read_labeled_texts(write(tmp_path / "e.txt", b"0\ta\n2\tb\n"))
    with pytest.raises(UserError, match=r"e\.txt:2: label '2' is not among the training labels"):
        label_ids(data, ["0", "1"])
    assert label_ids(data, ["0", "1"], strict=False).tolist() == [0, 2]


def test_unlabeled_lines_allowed_for_extraction(tmp_path):
    data = read_labeled_texts(write(tmp_path / "u.txt", b"just text\n1\tlabelled\n"), require_labels=False)
    assert data.labels == ["", "1"] and data.texts == ["just text", "labelled"]


def test_vocabulary_from_pre_segmented_japanese_keeps_words_whole_as_the_original():
    texts = ["一般 道路 を 走行 中 、 突然 エンジン が 停止 した 。",
             "高速 道路 で ブレーキ が 効か ない 。"] * 5
    vocab = build_vocabulary(texts, vocab_size=120, lowercase=False)
    assert "道路" in vocab  # the learner keeps words seen often enough (道路: 10 times)
    tokenizer = BertTokenizer(vocab, lowercase=False, tokenize_chinese_chars=False)
    # Words are WordPiece'd whole: 道路 one token, rarer 走行 as pieces of the word; に never occurs.
    assert tokenizer.tokenize("道路 を 走行 に") == ["道路", "を", "走", "##行", "[UNK]"]
    # Google's tokenization (the switch on) would cut the ideographs apart.
    google = build_vocabulary(texts, vocab_size=120, lowercase=False, tokenize_chinese_chars=True)
    assert BertTokenizer(google, lowercase=False).tokenize("道路 を 走行")[:2] == ["道", "路"]


def test_extraction_encoding_is_cls_and_text_truncated_and_max_lines(tmp_path):
    tokenizer = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"])
    training = encode_texts(tokenizer, ["a b c"], 4)
    assert training["input_ids"].tolist() == [[2, 4, 5, 3]]  # [CLS] a b [SEP]: [SEP] kept when cut
    extraction = encode_texts(tokenizer, ["a b", "a b c c c"], 4, trailing_sep=False)
    assert extraction["input_ids"].tolist() == [[2, 4, 5, 0], [2, 4, 5, 6]]  # [CLS] text, cut at 4
    assert extraction["input_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    path = write(tmp_path / "x.txt", b"0\ta\n\n1\tb\n0\tc\n")
    assert read_labeled_texts(path, max_lines=3).texts == ["a", "b"]  # the original's --max_length


def test_label_file_ours_or_the_originals_pickle(tmp_path):
    import pickle

    ours = tmp_path / "labels.json"
    ours.write_text('["エンジン", "制動装置"]', encoding="utf-8")
    assert read_label_file(str(ours)) == ["エンジン", "制動装置"]
    original = tmp_path / "labels.bin"
    original.write_bytes(pickle.dumps({"1": 1, "0": 0}))
    assert read_label_file(str(original)) == ["0", "1"]
    hostile = tmp_path / "hostile.bin"
    hostile.write_bytes(pickle.dumps(tmp_path))  # builds an object: refused, nothing constructed
    with pytest.raises(UserError, match="hostile.bin: neither a JSON list"):
        read_label_file(str(hostile))
    with pytest.raises(UserError, match="no such file"):
        read_label_file(str(tmp_path / "missing.bin"))
