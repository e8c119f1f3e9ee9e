"""The original's files and rules: viewing CSV -> sentence.txt, metadata -> vocab.txt ([PAD] = 3),
sentence.txt -> viewed / not_viewed files, line sampling, the split, line-by-line masked-LM data with
Hugging Face's masking, and a model padded with [PAD] = 3 giving the unpadded logits."""

import random

import numpy as np
import pytest

from common.tokenization import load_vocab
from ovt_explain.original_data import (DataFileError, classify_sentences, convert_to_sentences,
                                       convert_to_sentences_original, save_vocab, target_sort_ids)

META_HEADER = "channel,番組名,サブタイトル,放送日（開始）,開始時刻,sortid\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_to_sentences_sorts_each_user_in_order_of_first_appearance(tmp_path):
    csv_path = write(tmp_path, "input.csv", "userid,sortid\r\n000002,16278729005\r\n000001,16277769006\r\n"
                     "000002,16278591005\r\n\r\n000001,16277766006\r\n000003,16277790006\r\n000001,900\r\n")
    out = str(tmp_path / "sentence.txt")
    assert convert_to_sentences(csv_path, out) == {"users": 3, "rows": 6}
    assert open(out).read() == "16278591005 16278729005\n900 16277766006 16277769006\n16277790006\n"


def test_streaming_conversion_equals_the_originals_algorithm(tmp_path):
    """Many blocks and buckets (tiny sizes), duplicates, users interleaved: the same file as the original's."""
    rng = np.random.default_rng(0)
    users = rng.integers(0, 300, size=5000)
    slots = rng.integers(16277000000, 16277000000 + 2000, size=5000) * 10 + rng.integers(1, 9, size=5000)
    csv_path = write(tmp_path, "input.csv", "userid,sortid\n" + "".join(
        f"U{u:04d},{s}\n" for u, s in zip(users.tolist(), slots.tolist())))
    ours, original = str(tmp_path / "ours.txt"), str(tmp_path / "original.txt")
    convert_to_sentences(csv_path, ours, block_bytes=997, users_per_bucket=7)
    convert_to_sentences_original(csv_path, original)
    assert open(ours).read() == open(original).read()
    assert len(open(ours).read().splitlines()) == len(set(users.tolist()))


@pytest.mark.parametrize("text,message", [
    ("userid,sortid\n1,2\n3,x4\n", r"input\.csv:3: sortid 'x4' is not an integer"),
    ("userid,sortid\n1,2\n3,4,5\n", r"input\.csv:3: expected 2 columns"),
    ("userid;sortid\n1;2\n", r"input\.csv:1: expected the header userid,sortid"),
])
def test_bad_csv_rows_are_named_by_line(tmp_path, text, message):
    with pytest.raises(DataFileError, match=message):
        convert_to_sentences(write(tmp_path, "input.csv", text), str(tmp_path / "s.txt"))


def test_vocabulary_from_metadata_dates_and_special_tokens(tmp_path):
    meta = write(tmp_path, "tv_meta_data.csv", META_HEADER +
                 "Ch1,A,,2021/08/07,23:55,16283490001\n"     # last day inside
                 "Ch1,B,,2021/07/31,23:55,16277760001\n"     # before start_date
                 "Ch2,C,,2021/08/01,00:00,16277763002\n"     # start_date included
                 "Ch1,D,,2021/08/08,00:00,16283493001\n"     # end_date excluded
                 "Ch3,E,x,2021/08/03,12:00,900\n")
    path = save_vocab(meta, str(tmp_path / "out"))
    # No newline after the last token, as the original writes it.
    assert open(path).read() == "[UNK]\n[CLS]\n[SEP]\n[PAD]\n[MASK]\n900\n16277763002\n16283490001"
    vocab = load_vocab(path)
    assert vocab["[PAD]"] == 3 and vocab["[UNK]"] == 0 and vocab["[MASK]"] == 4


def test_classify_sentences_writes_the_originals_files(tmp_path):
    meta = write(tmp_path, "tv_meta_data.csv", META_HEADER +
                 "Ch1,東京2020オリンピック,◇野球\u3000決勝「日本×アメリカ」（中継）,2021/08/07,19:00,300\n"
                 "Ch1,東京2020オリンピック,◇野球\u3000決勝「日本×アメリカ」（中継）,2021/08/07,19:05,303\n"
                 "Ch1,東京2020オリンピック,◇陸上,2021/08/07,12:00,100\n"
                 "Ch1,東京2020オリンピック,◇野球\u3000決勝「日本×アメリカ」（中継）,2021/08/07,19:10,306\n")
    target = target_sort_ids(meta, "東京2020オリンピック", "◇野球\u3000決勝「日本×アメリカ」（中継）")
    assert target == [300, 303, 306]
    assert target_sort_ids(meta, "東京2020オリンピック", "") == [100, 300, 303, 306]
    sentences = write(tmp_path, "sentence.txt", "10 20 303\n301 306\n5 299 310\n50\n")
    counts = classify_sentences(sentences, target, str(tmp_path / "out"))
    assert counts == {"viewed_v2": 2, "not_viewed_v2": 2}
    # One history a line (ids below 300), an empty line for a viewer without history, no final newline.
    assert open(tmp_path / "out" / "viewed_v2.txt").read() == "10 20\n"
    assert open(tmp_path / "out" / "not_viewed_v2.txt").read() == "5 299\n50"
    counts = classify_sentences(write(tmp_path, "none.txt", "1 2\n"), target, str(tmp_path / "none"))
    assert counts == {"viewed_v2": 0, "not_viewed_v2": 1}
    assert not (tmp_path / "none" / "viewed_v2.txt").exists()  # as the original: no file for no users


def test_line_sampling_keeps_about_one_in_seven_and_shares_one_stream():
    from ovt_explain.bert_cls import sample_lines

    rng = random.Random(42)
    kept = sample_lines(range(70000), 10 ** 9, rng)
    # P(randrange(i) % 7 == 0) = ceil(i / 7) / i for line i (from 2): about 1/7 plus the first lines' excess.
    expected = sum(-(-i // 7) / i for i in range(2, 70002))
    assert abs(len(kept) - expected) < 4 * np.sqrt(expected)
    assert kept == sorted(kept) and len(set(kept)) == len(kept)
    # Every line read draws once, so a second file continues the first one's stream.
    first, second = random.Random(7), random.Random(7)
    sample_lines(range(30), 10 ** 9, first)
    for i in range(2, 32):
        second.randrange(i)
    assert first.random() == second.random()
    assert len(sample_lines(range(10 ** 6), 5, random.Random(1))) == 5
    assert sample_lines(range(10), 3, random.Random(1), "all") == [0, 1, 2]


def test_original_split_is_a_seeded_shuffle_cut_80_10_10():
    from ovt_explain.bert_cls import original_split

    split = original_split(25, 0.8, 0.1)
    assert [len(split[name]) for name in ("train", "validation", "test")] == [20, 2, 3]
    order = np.concatenate([split["train"], split["validation"], split["test"]])
    assert sorted(order.tolist()) == list(range(25))
    # datasets' shuffle(seed=42) is NumPy's default_rng(42).permutation.
    assert order.tolist() == np.random.default_rng(42).permutation(25).tolist()
    assert original_split(25, 0.8, 0.1, seed=1)["train"].tolist() != split["train"].tolist()


def test_line_examples_first_lines_evaluate_and_truncation_keeps_the_first_ids(tmp_path):
    import tensorflow as tf

    from ovt_explain.mlm_data import eval_line_count, write_line_examples

    assert [eval_line_count(n, 5) for n in (100, 30, 50, 10)] == [5, 2, 2, 0]  # "closest" rounding
    assert eval_line_count(100, 3.9) == 3  # the original passes int(eval_percentage)
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4, "11": 5, "12": 6, "13": 7}
    lines = [[], ["11"]] + [["12", "13", "99", "11", "12"]] * 38
    stats = write_line_examples(iter(lines), len(lines), vocab, 5, str(tmp_path), 5)
    assert (stats["eval"], stats["train"], stats["empty_lines"], stats["truncated"]) == (1, 38, 1, 38)
    records = [tf.io.parse_single_example(r, {"input_ids": tf.io.VarLenFeature(tf.int64)})["input_ids"].values.numpy()
               for r in tf.data.TFRecordDataset(stats["files"]["train"])]
    assert records[0].tolist() == [1, 6, 7, 0, 2]  # [CLS] 12 13 [UNK] [SEP]: the first 3 ids kept


def test_hugging_face_masking_shares_and_special_tokens():
    import tensorflow as tf

    from ovt_explain.mlm_data import mask_tokens

    ids = tf.constant(np.random.default_rng(0).integers(10, 1000, size=(64, 512)), tf.int32)
    special = tf.constant(np.arange(512)[None].repeat(64, 0) % 8 == 0)
    masked, chosen = mask_tokens(ids, special, tf.constant([1, 2], tf.int64), vocab_size=1000, mask_id=4)
    masked, chosen, ids, special = masked.numpy(), chosen.numpy(), ids.numpy(), special.numpy()
    assert not chosen[special].any() and (masked[~chosen] == ids[~chosen]).all()
    eligible = (~special).sum()
    assert abs(chosen.sum() / eligible - 0.15) < 0.01
    as_mask = (masked[chosen] == 4).mean()
    unchanged = (masked[chosen] == ids[chosen]).mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.015
    assert abs(1 - as_mask - unchanged - 0.1) < 0.015  # random ids
    again, _ = mask_tokens(tf.constant(ids), tf.constant(special), tf.constant([1, 2], tf.int64), 1000, 4)
    assert (again.numpy() == masked).all()  # stateless: the same seed, the same masks


def test_run_masking_chooses_whole_runs_of_consecutive_slots():
    import tensorflow as tf

    from ovt_explain.mlm_data import mask_tokens, run_starts, slot_table

    # Slot ids: the time in seconds, then the channel digit; 300 s apart on one channel = one run.
    tokens = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "10002", "13002", "16002", "10003", "25002", "28002"]
    vocab = {token: index for index, token in enumerate(tokens)}
    times, channels = (tf.constant(column, tf.int64) for column in slot_table(vocab))
    ids = tf.constant([[1, 5, 6, 7, 8, 9, 10, 2, 3],     # 10002 13002 16002 | 10003 | 25002 28002
                       [1, 8, 5, 6, 9, 10, 7, 2, 3]])    # 10003 | 10002 13002 | 25002 28002 | 16002
    starts = run_starts(ids, times, channels, 300).numpy()
    assert starts.tolist() == [[0, 1, 1, 1, 4, 5, 5, 7, 8], [0, 1, 2, 2, 4, 4, 6, 7, 8]]
    # Many rows of one long run each: a row is masked whole or not at all, rows at masked_lm_prob.
    row = [1, 5, 6, 7, 2]
    batch = tf.constant([row] * 4000)
    special = tf.constant(np.isin(np.asarray([row] * 4000), [1, 2]))
    _, chosen = mask_tokens(batch, special, tf.constant([3, 4], tf.int64), len(vocab), 4, 0.15,
                            run_starts(batch, times, channels, 300))
    chosen = chosen.numpy()[:, 1:4]
    assert (chosen.all(axis=1) | ~chosen.any(axis=1)).all()
    assert abs(chosen[:, 0].mean() - 0.15) < 0.02


def test_run_masking_in_the_pretraining_batches(tmp_path):
    from ovt_explain.mlm_data import masked_lm_dataset, write_line_examples

    # Each line: one 4-slot run on channel 2 (300 s apart), a zap on channel 3, a 3-slot run on channel 2.
    run_a = [str(1000 + 300 * i) + "2" for i in range(4)]
    run_b = [str(9000 + 300 * i) + "2" for i in range(3)]
    tokens = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"] + run_a + ["50003"] + run_b
    vocab = {token: index for index, token in enumerate(tokens)}
    lines = [run_a + ["50003"] + run_b] * 256
    stats = write_line_examples(iter(lines), len(lines), vocab, 12, str(tmp_path), 0)
    weights = np.concatenate([batch["masked_lm_weights"].numpy() for batch in masked_lm_dataset(
        stats["files"]["train"], 64, 12, vocab, seed=0, is_training=False, mlm_probability=0.3, masking="runs")])
    assert weights.shape == (256, 12)
    for run in ([1, 2, 3, 4], [5], [6, 7, 8]):  # positions after [CLS]
        chosen = weights[:, run]
        assert (chosen.min(axis=1) == chosen.max(axis=1)).all()  # a run is masked whole or not at all
        assert 0.2 < chosen[:, 0].mean() < 0.4
    with pytest.raises(ValueError, match="masking"):
        masked_lm_dataset(stats["files"]["train"], 64, 12, vocab, seed=0, is_training=False, masking="words")


def test_masked_lm_batches_pad_with_the_vocabularys_pad_id(tmp_path):
    from ovt_explain.mlm_data import masked_lm_dataset, write_line_examples

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4, **{str(i): i for i in range(5, 40)}}
    lines = [[str(i) for i in range(5, 5 + length)] for length in (3, 30, 7, 1)]
    stats = write_line_examples(iter(lines), len(lines), vocab, 16, str(tmp_path), 0)
    batch = next(iter(masked_lm_dataset(stats["files"]["train"], 4, 16, vocab, seed=0, is_training=False)))
    mask = batch["input_mask"].numpy()
    assert mask.sum(axis=1).tolist() == [5, 16, 9, 3]
    original = batch["masked_lm_ids"].numpy()
    assert (original[mask == 0] == 3).all() and (batch["input_ids"].numpy()[mask == 0] == 3).all()
    weights = batch["masked_lm_weights"].numpy()
    assert weights[mask == 0].sum() == 0 and weights[original == 1].sum() == 0 and weights[original == 2].sum() == 0


def test_padding_with_pad_id_3_gives_the_unpadded_logits():
    import keras

    from common.config import BertConfig
    from ovt_explain.modeling import classifier_from_config, encode_histories

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4, **{str(i): i for i in range(5, 30)}}
    keras.utils.set_random_seed(0)
    model = classifier_from_config(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=32,
                                              max_position_embeddings=32))
    history = ["7", "12", "99", "25", "6"]
    padded = encode_histories([history], vocab, 20)
    assert padded["input_ids"][0].tolist() == [1, 7, 12, 0, 25, 6, 2] + [3] * 13
    exact = encode_histories([history], vocab, 7)
    assert exact["input_mask"].all()
    logits_padded = model(padded, training=False).numpy()
    logits_exact = model(exact, training=False).numpy()
    np.testing.assert_allclose(logits_padded, logits_exact, atol=1e-5)
    # Keep-first truncation: a short length keeps the first ids.
    assert encode_histories([history], vocab, 4)["input_ids"][0].tolist() == [1, 7, 12, 2]
    assert encode_histories([history], vocab, 4, "recent")["input_ids"][0].tolist() == [1, 25, 6, 2]


def test_the_default_config_builds_the_published_model(tmp_path):
    """configs/pretraining_config.json with the paper's 4,345-token vocabulary: hidden 256, 8 layers,
    8 heads, feed-forward 3,072, 512 positions (the published config.json), parameters counted by hand."""
    import json
    import os

    from common.config import BertConfig
    from common.encoder import BertEncoder
    from ovt_explain.bert_pretraining import PRETRAINING_KEYS
    from ovt_explain.run_config import load_config

    path = os.path.join(os.path.dirname(__file__), "..", "..", "ovt_explain", "configs", "pretraining_config.json")
    config = load_config(path, PRETRAINING_KEYS)
    hidden, layers, ffn, positions = (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"],
                                      config["max_position_embeddings"] or config["max_seq_length"])
    assert (hidden, layers, config["num_attention_heads"], ffn, positions) == (256, 8, 8, 3072, 512)
    vocab = 4345
    encoder = BertEncoder(BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=config["num_attention_heads"], intermediate_size=ffn,
                                     max_position_embeddings=positions))
    encoder({"input_ids": np.zeros((1, 4), np.int32), "input_mask": np.ones((1, 4), np.int32),
             "segment_ids": np.zeros((1, 4), np.int32)})
    embeddings = (vocab + positions + 2) * hidden + 2 * hidden
    block = 4 * (hidden * hidden + hidden) + (hidden * ffn + ffn) + (ffn * hidden + hidden) + 2 * 2 * hidden
    assert encoder.count_params() == embeddings + layers * block + hidden * hidden + hidden == 16_033_280
    assert json.load(open(path))["intermediate_size"] == 3072
