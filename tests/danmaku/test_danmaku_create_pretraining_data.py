"""`python -m danmaku.create_pretraining_data` on a 3-document fixture: pairing, NSP labels, masks, determinism."""

import collections
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from common.cli import UserError
from common.pretraining_data import pretraining_feature_spec
from common.tokenization import load_vocab
from danmaku.data import create_pretraining_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_SEQ_LENGTH = 24
MAX_PREDICTIONS = 4
# Every comment is one unique token "d<document>c<index>", so each token says where it came from.
DOCUMENT_SIZES = (14, 11, 17)


def run_cli(*arguments, check=True):
    result = subprocess.run([sys.executable, "-m", "danmaku.create_pretraining_data", "--noprogress", *arguments],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "three_videos.txt"
    documents = ["\n".join(f"d{document}c{index:02d}" for index in range(size))
                 for document, size in enumerate(DOCUMENT_SIZES)]
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return str(path)


def read_records(pattern):
    """Every record of the shards as a dict of NumPy rows (parsed a batch at a time: fast)."""
    spec = pretraining_feature_spec(MAX_SEQ_LENGTH, MAX_PREDICTIONS)
    dataset = tf.data.TFRecordDataset(sorted(glob.glob(pattern))).batch(4096)
    records = []
    for batch in dataset.map(lambda serialized: tf.io.parse_example(serialized, spec)):
        arrays = {key: value.numpy() for key, value in batch.items()}
        records += [{key: value[row] for key, value in arrays.items()} for row in range(len(arrays["input_ids"]))]
    return records


def make_data(tmp_path, corpus_file, name, *extra):
    output = str(tmp_path / name / "data.tfrecord")
    result = run_cli(f"--input_file={corpus_file}", f"--output_file={output}", "--build_vocab=100",
                     f"--max_seq_length={MAX_SEQ_LENGTH}", f"--max_predictions_per_seq={MAX_PREDICTIONS}",
                     "--short_seq_prob=0", *extra)
    vocab = load_vocab(str(tmp_path / name / "vocab.txt"))
    return result, read_records(output[: -len(".tfrecord")] + "*.tfrecord"), {i: t for t, i in vocab.items()}


def test_segments_pair_as_google_does_and_labels_say_which_are_random(tmp_path, corpus_file):
    result, records, id_to_token = make_data(tmp_path, corpus_file, "a", "--dupe_factor=20", "--num_shards=2",
                                             "--random_seed=7")
    assert "documents 3, comments 42" in result.stdout and "masked [UNK] share 0.0000%" in result.stdout
    labels = collections.Counter()
    for record in records:
        length = int(record["input_mask"].sum())
        assert record["input_mask"].tolist() == [1] * length + [0] * (MAX_SEQ_LENGTH - length)
        ids = record["input_ids"][:length].copy()
        weights = record["masked_lm_weights"]
        positions = record["masked_lm_positions"][weights > 0]
        # Google: round(len * masked_lm_prob) predictions (at least 1, at most the cap), sorted positions.
        assert len(positions) == min(MAX_PREDICTIONS, max(1, round(length * 0.15)))
        assert list(positions) == sorted(positions)
        ids[positions] = record["masked_lm_ids"][weights > 0]  # undo the masking
        tokens = [id_to_token[int(token_id)] for token_id in ids]
        separators = [index for index, token in enumerate(tokens) if token == "[SEP]"]
        assert tokens[0] == "[CLS]" and len(separators) == 2 and separators[1] == length - 1
        assert not set(positions) & {0, *separators}  # [CLS]/[SEP] are never masked
        segments = record["segment_ids"][:length].tolist()
        assert segments == [0] * (separators[0] + 1) + [1] * (length - separators[0] - 1)
        segment_a, segment_b = tokens[1:separators[0]], tokens[separators[0] + 1:-1]
        assert segment_a and segment_b
        for segment in (segment_a, segment_b):  # whole comments, consecutive, from one document
            documents = {token[:2] for token in segment}
            indices = [int(token[3:]) for token in segment]
            assert len(documents) == 1 and indices == list(range(indices[0], indices[0] + len(indices)))
        is_random_next = int(record["next_sentence_labels"][0])
        labels[is_random_next] += 1
        if is_random_next:
            assert segment_b[0][:2] != segment_a[0][:2]  # from another video
        else:
            assert segment_b[0][:2] == segment_a[0][:2] and int(segment_b[0][3:]) > int(segment_a[-1][3:])
    assert labels[0] > 30 and labels[1] > 30


def test_masking_is_80_10_10_on_a_large_sample_and_deterministic(tmp_path, corpus_file):
    _, records, id_to_token = make_data(tmp_path, corpus_file, "a", "--dupe_factor=400", "--random_seed=3")
    mask_id = {token: index for index, token in id_to_token.items()}["[MASK]"]
    outcomes = collections.Counter()
    for record in records:
        weights = record["masked_lm_weights"] > 0
        shown = record["input_ids"][record["masked_lm_positions"][weights]]
        original = record["masked_lm_ids"][weights]
        outcomes["mask"] += int(np.sum(shown == mask_id))
        outcomes["same"] += int(np.sum(shown == original))
        outcomes["random"] += int(np.sum((shown != mask_id) & (shown != original)))
    total = sum(outcomes.values())
    assert total > 4000
    assert abs(outcomes["mask"] / total - 0.8) < 0.03
    assert abs(outcomes["random"] / total - 0.1) < 0.025
    # "same" also gets the random draws that hit the original token (1 in ~50 of them here).
    assert abs(outcomes["same"] / total - 0.1) < 0.025
    # Same seed: identical files; another seed: different instances.
    _, again, _ = make_data(tmp_path, corpus_file, "b", "--dupe_factor=400", "--random_seed=3")
    _, other, _ = make_data(tmp_path, corpus_file, "c", "--dupe_factor=400", "--random_seed=4")
    assert all(np.array_equal(a[key], b[key]) for a, b in zip(records, again) for key in a) and len(again) == len(records)
    assert not all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(records, other))


def test_drop_oov_comments_reports_counts_and_bad_input_is_one_error_line(tmp_path):
    vocab_dir = tmp_path / "model"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"草好耶啊哈"]) + "\n",
                                         encoding="utf-8")
    corpus = tmp_path / "c.txt"
    corpus.write_text("草\n好耶😂\n哈哈\n\n啊\n🐱\n耶耶\n\n哈\n草草\n", encoding="utf-8")
    common = [f"--input_file={corpus}", f"--vocab_file={vocab_dir / 'vocab.txt'}", "--max_seq_length=16",
              "--max_predictions_per_seq=3"]
    dropped = run_cli(*common, f"--output_file={tmp_path / 'out' / 'dropped.tfrecord'}", "--drop_oov_comments")
    assert "documents 3, comments 6, dropped 2 out-of-vocabulary comments" in dropped.stdout
    kept = run_cli(*common, f"--output_file={tmp_path / 'out' / 'kept.tfrecord'}")
    assert "comments 8, kept 2 comments with [UNK]" in kept.stdout

    corpus.write_text("only one video\nno blank line\n", encoding="utf-8")
    failed = run_cli(*common, f"--output_file={tmp_path / 'out2' / 'x.tfrecord'}", check=False)
    assert failed.returncode == 1 and failed.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "need at least 2" in failed.stderr and not (tmp_path / "out2").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("草,1,2020-01-01 00:00:00\n草,x,2020-01-01 00:00:00\n", encoding="utf-8")
    failed = run_cli(f"--input_file={bad}", "--input_format=csv", f"--vocab_file={vocab_dir / 'vocab.txt'}",
                     f"--output_file={tmp_path / 'out3' / 'x.tfrecord'}", check=False)
    assert failed.returncode == 1 and f"error: {bad}:2: video_seconds 'x' is not a number" in failed.stderr
    assert not (tmp_path / "out3").exists()


@pytest.mark.parametrize("arguments, message", [
    (dict(masked_lm_prob=1.5), "masked_lm_prob must be in \\[0, 1\\], got 1.5"),
    (dict(max_seq_length=2), "max_seq_length=2 leaves fewer than 2 tokens"),
    (dict(num_shards=0), "--num_shards \\(0\\) and --num_workers \\(None\\) must be at least 1"),
])
def test_bad_settings_are_one_user_error_before_anything_is_written(tmp_path, corpus_file, arguments, message):
    output = tmp_path / "out" / "x.tfrecord"
    with pytest.raises(UserError, match=message):
        create_pretraining_data(corpus_file, str(output), build_vocab=50, progress=False, **arguments)
    assert not (tmp_path / "out").exists()  # not even the --build_vocab vocabulary
    with pytest.raises(UserError, match="nope.txt: no such --vocab_file"):
        create_pretraining_data(corpus_file, str(output), str(tmp_path / "nope.txt"), progress=False)
