"""`python -m danmaku.create_pretraining_data`: pairing, NSP labels, masks and determinism on a 3-document fixture;
target lengths and truncation against Google's rules on 40 documents."""

import collections
import glob
import json
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
    corpus.write_text("草\n好耶😂\n哈哈\n\u200b\n\n啊\n🐱\n耶耶\n\n哈\n草草\n", encoding="utf-8")  # \u200b: no token
    common = [f"--input_file={corpus}", f"--vocab_file={vocab_dir / 'vocab.txt'}", "--max_seq_length=16",
              "--max_predictions_per_seq=3"]
    dropped = run_cli(*common, f"--output_file={tmp_path / 'out' / 'dropped.tfrecord'}", "--drop_oov_comments")
    assert "documents 3, comments 6, dropped 2 out-of-vocabulary comments" in dropped.stdout
    kept = run_cli(*common, f"--output_file={tmp_path / 'out' / 'kept.tfrecord'}")
    assert "comments 8, kept 2 comments with [UNK]" in kept.stdout
    for result in (dropped, kept):  # counted by the corpus reader (dropping) or by the tokenizing workers (keeping)
        assert json.loads(result.stdout.strip().splitlines()[-1])["empty_lines_skipped"] == 1

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


def _many_videos(path, num_documents=40, seed=0):
    """Videos of 6-20 comments of 1-5 words; word k of comment c of video d is "v<d>c<c>w<k>"."""
    rng = np.random.default_rng(seed)
    sizes = []
    videos = []
    for video in range(num_documents):
        words = [int(rng.integers(1, 6)) for _ in range(int(rng.integers(6, 21)))]
        sizes.append(words)
        videos.append("\n".join(" ".join(f"v{video}c{comment}w{k}" for k in range(count))
                                for comment, count in enumerate(words)))
    path.write_text("\n\n".join(videos) + "\n", encoding="utf-8")
    return sizes


def _span(tokens):
    """(video, [(comment, word), ...]) of a segment; checks it is a contiguous stretch of one video's words."""
    places = [tuple(int(part) for part in token[1:].replace("c", " ").replace("w", " ").split()) for token in tokens]
    videos = {video for video, _, _ in places}
    assert len(videos) == 1
    return videos.pop(), [(comment, word) for _, comment, word in places]


def test_target_lengths_and_truncation_follow_googles_rules(tmp_path):
    """40 videos, short_seq_prob > 0: chunks end at the first comment that reaches the target (max_seq_length - 3,
    or a shorter random one), the longer segment is trimmed token by token from either end down to exactly the
    limit (B on ties), and short targets appear only with short_seq_prob > 0."""
    sizes = _many_videos(tmp_path / "videos.txt")
    max_num_tokens = MAX_SEQ_LENGTH - 3

    def instances(short_seq_prob, name):
        output = str(tmp_path / name / "data.tfrecord")
        stats = create_pretraining_data(str(tmp_path / "videos.txt"), output, build_vocab=5000, progress=False,
                                        num_workers=1, max_seq_length=MAX_SEQ_LENGTH,
                                        max_predictions_per_seq=MAX_PREDICTIONS, dupe_factor=10,
                                        short_seq_prob=short_seq_prob, random_seed=1)
        assert stats["documents"] == 40
        vocab = {index: token for token, index in load_vocab(str(tmp_path / name / "vocab.txt")).items()}
        found = []
        for record in read_records(output):
            length = int(record["input_mask"].sum())
            ids = record["input_ids"][:length].copy()
            weights = record["masked_lm_weights"] > 0
            ids[record["masked_lm_positions"][weights]] = record["masked_lm_ids"][weights]
            tokens = [vocab[int(token_id)] for token_id in ids]
            first_sep = tokens.index("[SEP]")
            found.append((tokens[1:first_sep], tokens[first_sep + 1:-1], int(record["next_sentence_labels"][0])))
        return found

    def whole(video, places, at_start):  # does the segment start (end) at a comment boundary?
        comment, word = places[0] if at_start else places[-1]
        return word == 0 if at_start else word == sizes[video][comment] - 1

    short_chunks = {}
    for short_seq_prob in (0.0, 0.5):
        early = actual = 0
        for segment_a, segment_b, is_random_next in instances(short_seq_prob, f"p{short_seq_prob}"):
            (video_a, a), (video_b, b) = _span(segment_a), _span(segment_b)
            for places in (a, b):  # contiguous words: only the ends of a segment are trimmed
                flat = [sum(sizes[video_a if places is a else video_b][:comment]) + word for comment, word in places]
                assert flat == list(range(flat[0], flat[0] + len(flat)))
            la, lb = len(a), len(b)
            assert la + lb <= max_num_tokens
            cut_a = not (whole(video_a, a, True) and whole(video_a, a, False))
            cut_b = not (whole(video_b, b, True) and whole(video_b, b, False))
            if cut_a or cut_b:
                assert la + lb == max_num_tokens  # trimming stops exactly at the limit
            if cut_a and cut_b:
                assert la - lb in (0, 1)  # both trimmed: the longer first, B on ties
            elif cut_a:  # A is trimmed only while longer than B
                assert la >= lb
            elif cut_b:  # B while at least as long as A
                assert lb >= la - 1
            if not is_random_next:
                assert video_a == video_b and b[0][0] >= a[-1][0]
                actual += 1
                ends_video = b[-1][0] == len(sizes[video_b]) - 1
                if not (cut_a or cut_b) and not ends_video:
                    # The chunk stopped at the first comment reaching the target: below max_num_tokens only for a
                    # short target.
                    early += la + lb < max_num_tokens
        short_chunks[short_seq_prob] = early / actual
    assert short_chunks[0.0] == 0.0
    assert short_chunks[0.5] > 0.1
