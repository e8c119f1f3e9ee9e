"""common/tfrecords.py: hand-encoded Examples and TFRecord frames equal TensorFlow's bytes; tf.data reading."""

import os

import numpy as np
import pytest
import tensorflow as tf

from common import tfrecords


def _tf_example_bytes(int_features, float_features=None):
    feature = {name: tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))
               for name, values in int_features.items()}
    for name, values in (float_features or {}).items():
        feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def _random_features(rng, rows):
    ints = {
        "info": rng.integers(-3, 2**62, size=(rows, 1)),  # negatives take 10 bytes, large values 9
        "input_ids": rng.integers(0, 70000, size=(rows, 30)),  # 1- to 3-byte varints
        "input_mask": rng.integers(0, 2, size=(rows, 30)),
        "empty_ints": np.zeros((rows, 0), dtype=np.int64),
    }
    floats = {"masked_lm_weights": rng.random((rows, 5)).astype(np.float32),
              "empty_floats": np.zeros((rows, 0), dtype=np.float32)}
    return ints, floats


def test_single_and_batched_serialization_are_byte_identical_to_tensorflow():
    rng = np.random.default_rng(7)
    ints, floats = _random_features(rng, 40)
    batched = tfrecords.serialize_int_examples(ints, floats).to_list()
    assert len(batched) == 40
    for row in range(40):
        row_ints = {name: values[row].tolist() for name, values in ints.items()}
        row_floats = {name: values[row].tolist() for name, values in floats.items()}
        expected = _tf_example_bytes(row_ints, row_floats)
        assert tfrecords.serialize_int_example(row_ints, row_floats) == expected
        assert batched[row] == expected
    assert tfrecords.serialize_int_example({"x": [1, 300]}) == _tf_example_bytes({"x": [1, 300]})


def test_serialization_rejects_bad_features():
    with pytest.raises(ValueError, match="both as int and as float"):
        tfrecords.serialize_int_example({"a": [1]}, {"a": [1.0]})
    with pytest.raises(ValueError, match="number of records"):
        tfrecords.serialize_int_examples({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})
    assert len(tfrecords.serialize_int_examples({"a": np.zeros((0, 4), dtype=np.int64)})) == 0


def test_crc32c_known_value():
    records = tfrecords.PackedRecords.from_list([b"123456789", b"", b"a" * 1000])
    crcs = tfrecords.crc32c_many(records)
    assert crcs[0] == 0xE3069283  # the CRC-32C check value
    assert crcs[1] == 0


def test_writer_matches_tf_record_writer_and_is_atomic(tmp_path):
    rng = np.random.default_rng(3)
    ints, floats = _random_features(rng, 2500)  # more than one flush of single writes
    records = tfrecords.serialize_int_examples(ints, floats).to_list()
    records += [b"", b"x", bytes(range(256)) * 40]
    expected_path = str(tmp_path / "expected.tfrecord")
    with tf.io.TFRecordWriter(expected_path) as writer:
        for record in records:
            writer.write(record)

    ours = tmp_path / "ours.tfrecord"
    with tfrecords.atomic_tfrecord_writer(ours) as writer:
        writer.write_records(records[:100])
        for record in records[100:]:
            writer.write(record)
    assert writer.records_written == len(records)
    assert ours.read_bytes() == open(expected_path, "rb").read()

    failed = tmp_path / "failed.tfrecord"
    with pytest.raises(RuntimeError):
        with tfrecords.atomic_tfrecord_writer(failed) as writer:
            writer.write(b"half")
            raise RuntimeError("boom")
    assert not failed.exists()
    assert sorted(os.listdir(tmp_path)) == ["expected.tfrecord", "ours.tfrecord"]  # no temp file left


def _write_numbered(path, start, count):
    with tfrecords.atomic_tfrecord_writer(path) as writer:
        for value in range(start, start + count):
            writer.write(tfrecords.serialize_int_example({"id": [value], "pair": [value, -value]}, {"w": [value / 2]}))


def test_parse_and_make_dataset_round_trip(tmp_path):
    path = tmp_path / "numbers.tfrecord"
    _write_numbered(path, 0, 10)
    spec = dict(tfrecords.fixed_int_feature_spec({"id": 1, "pair": 2}), w=tf.io.FixedLenFeature([1], tf.float32))

    single = tfrecords.parse_int_features(next(iter(tf.data.TFRecordDataset(str(path)))), spec)
    assert single["id"].dtype == tf.int32 and single["id"].numpy().tolist() == [0]

    dataset = tfrecords.make_dataset(str(path), spec, batch_size=4, is_training=False)
    batches = list(dataset.as_numpy_iterator())
    assert [len(batch["id"]) for batch in batches] == [4, 4, 2]  # evaluation keeps the remainder, no repeat
    ids = np.concatenate([batch["id"][:, 0] for batch in batches])
    assert ids.tolist() == list(range(10))
    pairs = np.concatenate([batch["pair"] for batch in batches])
    assert pairs.dtype == np.int32 and pairs[:, 1].tolist() == [-value for value in range(10)]
    weights = np.concatenate([batch["w"][:, 0] for batch in batches])
    assert weights.dtype == np.float32 and np.allclose(weights, np.arange(10) / 2)


def test_training_dataset_shuffles_deterministically_repeats_and_drops_remainder(tmp_path):
    path = tmp_path / "numbers.tfrecord"
    _write_numbered(path, 0, 10)
    spec = tfrecords.fixed_int_feature_spec({"id": 1})

    def first_ids(seed):
        dataset = tfrecords.make_dataset(str(path), spec, batch_size=4, is_training=True, seed=seed)
        return [batch["id"][:, 0].tolist() for batch in dataset.take(6).as_numpy_iterator()]

    batches = first_ids(1)
    assert all(len(batch) == 4 for batch in batches)  # 24 ids from 10 records: repeated, full batches only
    flat = sum(batches, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epoch by epoch
    assert flat[:10] != list(range(10))  # not the file order
    assert flat[10:20] != flat[:10]  # a new order every epoch
    assert first_ids(1) == batches
    assert first_ids(2) != batches


def test_training_interleaves_shuffled_files_deterministically(tmp_path):
    for index in range(6):
        _write_numbered(tmp_path / f"part-{index}.tfrecord", 100 * index, 20)
    spec = tfrecords.fixed_int_feature_spec({"id": 1})

    def epoch(seed, cycle_length=3):
        dataset = tfrecords.make_dataset(str(tmp_path / "part-*.tfrecord"), spec, batch_size=1, is_training=True,
                                         seed=seed, shuffle_buffer=1, cycle_length=cycle_length)  # no record shuffle
        return [int(batch["id"][0, 0]) for batch in dataset.take(120).as_numpy_iterator()]

    ids = epoch(1)
    assert sorted(ids) == [100 * part + offset for part in range(6) for offset in range(20)]
    files = [value // 100 for value in ids]
    assert len(set(files[:3])) == 3  # record by record from three files at a time
    assert [value % 100 for value in ids if value // 100 == files[0]] == list(range(20))  # each file in order
    assert epoch(1) == ids
    file_orders = {tuple(dict.fromkeys(value // 100 for value in epoch(seed))) for seed in range(1, 5)}
    assert len(file_orders) > 1  # the file list is shuffled, differently for another seed
    assert len(set(value // 100 for value in epoch(1, cycle_length=1)[:20])) == 1  # one file after another


def test_bytes_features_match_tensorflow_and_parse(tmp_path):
    texts = ["déjà vu", "", "a longer sentence " * 20]
    single = [tfrecords.serialize_int_example({"ids": [index, 7]}, {"w": [0.5]},
                                              {"text": text, "tags": [b"x", "y" * index], "none": []})
              for index, text in enumerate(texts)]
    for index, text in enumerate(texts):
        feature = {"ids": tf.train.Feature(int64_list=tf.train.Int64List(value=[index, 7])),
                   "w": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
                   "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")])),
                   "tags": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x", b"y" * index])),
                   "none": tf.train.Feature(bytes_list=tf.train.BytesList(value=[]))}
        expected = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)
        assert single[index] == expected
    batched = tfrecords.serialize_int_examples(
        {"ids": np.array([[index, 7] for index in range(3)])}, {"w": np.full((3, 1), 0.5)},
        {"text": texts, "tags": [[b"x", "y" * index] for index in range(3)], "none": [[], [], []]})
    assert batched.to_list() == single
    with pytest.raises(ValueError, match="both as int and as bytes"):
        tfrecords.serialize_int_example({"a": [1]}, bytes_features={"a": b"x"})


def test_write_sharded_deals_records_round_robin_and_parses_back(tmp_path):
    features = {"id": np.arange(11)[:, None], "score": (np.arange(11) / 4)[:, None].astype(np.float32),
                "text": [f"record {index}" for index in range(11)]}
    paths = tfrecords.write_sharded(features, str(tmp_path / "data"), 3)
    assert [os.path.basename(path) for path in paths] == [f"data-0000{index}-of-00003.tfrecord" for index in range(3)]
    spec = {"id": tf.io.FixedLenFeature([1], tf.int64), "score": tf.io.FixedLenFeature([1], tf.float32),
            "text": tf.io.FixedLenFeature([], tf.string)}
    for shard, path in enumerate(paths):
        batch = next(tfrecords.make_dataset(path, spec, batch_size=100, is_training=False).as_numpy_iterator())
        expected = list(range(shard, 11, 3))
        assert batch["id"][:, 0].tolist() == expected
        assert np.allclose(batch["score"][:, 0], np.array(expected) / 4)
        assert [text.decode() for text in batch["text"]] == [f"record {index}" for index in expected]
    raw = [b"r%d" % index for index in range(5)]
    paths = tfrecords.write_sharded(raw, str(tmp_path / "raw"), 2)
    assert [[record.numpy() for record in tf.data.TFRecordDataset(path)] for path in paths] == [raw[0::2], raw[1::2]]
    with pytest.raises(ValueError, match="num_shards"):
        tfrecords.write_sharded(raw, str(tmp_path / "none"), 0)


@pytest.mark.parametrize("num_files", [1, 3])
def test_sharding_by_input_context_is_a_disjoint_cover(tmp_path, num_files):
    for index in range(num_files):
        _write_numbered(tmp_path / f"part-{index}.tfrecord", 100 * index, 7)
    spec = tfrecords.fixed_int_feature_spec({"id": 1})
    pattern = str(tmp_path / "part-*.tfrecord")
    shards = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        dataset = tfrecords.make_dataset(pattern, spec, batch_size=100, is_training=False, input_context=context)
        shards.append({int(value) for batch in dataset.as_numpy_iterator() for value in batch["id"][:, 0]})
    everything = {100 * index + offset for index in range(num_files) for offset in range(7)}
    assert shards[0] and shards[1]
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == everything


@pytest.mark.parametrize("num_files", [1, 3])
def test_training_pipelines_read_disjoint_records(tmp_path, num_files):
    for index in range(num_files):
        _write_numbered(tmp_path / f"part-{index}.tfrecord", 100 * index, 7)
    spec = tfrecords.fixed_int_feature_spec({"id": 1})
    shards = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        dataset = tfrecords.make_dataset(str(tmp_path / "part-*.tfrecord"), spec, batch_size=100, is_training=True,
                                         repeat=False, drop_remainder=False, seed=pipeline_id, input_context=context)
        shards.append([int(value) for batch in dataset.as_numpy_iterator() for value in batch["id"][:, 0]])
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == [100 * index + offset for index in range(num_files) for offset in range(7)]


def test_make_dataset_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        tfrecords.make_dataset(str(tmp_path / "nothing-here*.tfrecord"), {}, batch_size=1, is_training=False)
