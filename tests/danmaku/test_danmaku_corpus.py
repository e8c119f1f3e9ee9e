"""Danmaku corpus readers: documents from text and CSV files, the OOV filter and its counts, and errors."""

import os
import pickle

import pytest

from common.cli import UserError
from common.tokenization import BertTokenizer
from danmaku.corpus import CorpusError, DanmakuCorpus, expand_input_files, parse_csv_line
from danmaku.files import output_prefix_of, resolve_record_files


def write(path, text, mode="w"):
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as handle:
        handle.write(text)
    return str(path)


def test_text_documents_are_blank_line_separated_and_files_keep_their_order(tmp_path):
    first = write(tmp_path / "a.txt", "前方高能\r\n  awsl  \r\n\r\n\r\n草\n哈哈哈\n\n")
    second = write(tmp_path / "b.txt", "\ufeff泪目\n下次一定")  # BOM, no final newline
    corpus = DanmakuCorpus([os.path.join(tmp_path, "*.txt")])
    assert list(corpus) == [["前方高能", "awsl"], ["草", "哈哈哈"], ["泪目", "下次一定"]]
    assert corpus.stats.files == 2 and corpus.stats.documents == 3 and corpus.stats.comments == 6
    # Comma-separated lists work as in Google's --input_file, and iterating twice gives the same. Only blank lines end
    # documents (Google's reader): b.txt's last document runs on into a.txt.
    corpus = DanmakuCorpus(f"{second},{first}")
    assert list(corpus) == list(corpus) == [["泪目", "下次一定", "前方高能", "awsl"], ["草", "哈哈哈"]]
    assert corpus.stats.files == 2 and corpus.stats.documents == 2
    assert pickle.loads(pickle.dumps(corpus)).files == corpus.files  # worker processes get a copy


def test_csv_text_may_contain_commas_and_each_file_is_one_document(tmp_path):
    video_1 = write(tmp_path / "v1.csv", "text,video_seconds,time\n"
                                        "你好,世界,12.5,2020-01-01 10:00:00\n"
                                        "a,b,,c,3,2020-01-01 10:00:01\n"
                                        "\n"
                                        "   ,4,2020-01-01 10:00:02\n"  # empty text: skipped
                                        "awsl,5,2020-01-01 10:00:03\n")
    video_2 = write(tmp_path / "v2.csv", "草,0.1,2019-12-31 23:59:59\n")
    corpus = DanmakuCorpus([video_1, video_2], input_format="csv")
    assert list(corpus) == [["你好,世界", "a,b,,c", "awsl"], ["草"]]
    assert parse_csv_line("x,y,1,2020-01-01 00:00:00", "f", 2) == ("x,y", 1.0, "2020-01-01 00:00:00")


@pytest.mark.parametrize("line, message", [
    ("only text", "3 comma-separated fields"),
    ("text,soon,2020-01-01 10:00:00", "video_seconds 'soon' is not a number"),
    ("text,1.5,2020/01/01 10:00", "timestamp '2020/01/01 10:00' is not"),
])
def test_malformed_csv_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "bad.csv", f"ok,1,2020-01-01 10:00:00\n{line}\n")
    with pytest.raises(CorpusError, match=message) as error:
        list(DanmakuCorpus(path, input_format="csv"))
    assert str(error.value).startswith(f"{path}:2: ")
    assert isinstance(error.value, UserError)  # the CLIs turn it into one `error:` line


def test_invalid_utf8_and_missing_files_are_clear_errors(tmp_path):
    path = write(tmp_path / "latin1.txt", "ok\n".encode() + "caf\xe9\n".encode("latin-1"), mode="wb")
    with pytest.raises(CorpusError, match=rf"^{path}:2: not valid UTF-8"):
        list(DanmakuCorpus(path))
    with pytest.raises(CorpusError, match="nope.txt: no such input file"):
        expand_input_files(str(tmp_path / "nope.txt"))
    with pytest.raises(CorpusError, match="no input file matches"):
        expand_input_files(str(tmp_path / "*.csv"))
    with pytest.raises(UserError, match="--input_format"):
        DanmakuCorpus(path, input_format="json")


def test_out_of_vocabulary_comments_are_dropped_or_kept_and_counted(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "草", "好", "耶", "awsl"]
    tokenizer = BertTokenizer(vocab)
    path = write(tmp_path / "c.txt", "草\n好耶😂\nawsl\n\u200b\n🐱🐱\n\n耶\n")
    dropped = DanmakuCorpus(path, tokenize=tokenizer.tokenize, drop_oov_comments=True)
    assert list(dropped) == [["草", "awsl"], ["耶"]]
    assert (dropped.stats.dropped_oov_comments, dropped.stats.oov_comments_kept) == (2, 0)
    assert dropped.stats.empty_lines_skipped == 1  # a zero-width space holds no token
    kept = DanmakuCorpus(path, tokenize=tokenizer.tokenize, drop_oov_comments=False)
    assert list(kept) == [["草", "好耶😂", "awsl", "🐱🐱"], ["耶"]]
    assert (kept.stats.dropped_oov_comments, kept.stats.oov_comments_kept) == (0, 2)
    assert kept.stats.comments == 5
    # A document whose comments are all dropped disappears.
    path = write(tmp_path / "d.txt", "😂\n\n草\n")
    corpus = DanmakuCorpus(path, tokenize=tokenizer.tokenize, drop_oov_comments=True)
    assert list(corpus) == [["草"]] and corpus.stats.documents == 1


def test_record_file_names_between_the_two_scripts(tmp_path):
    assert output_prefix_of("data/x.tfrecord") == "data/x"
    assert output_prefix_of("data/x") == "data/x"
    shards = [write(tmp_path / f"x-0000{i}-of-00002.tfrecord", "") for i in range(2)]
    assert resolve_record_files(str(tmp_path / "x.tfrecord")) == shards
    assert resolve_record_files(str(tmp_path / "x-*")) == shards
    with pytest.raises(UserError, match="nothing matches"):
        resolve_record_files(str(tmp_path / "y.tfrecord"))
