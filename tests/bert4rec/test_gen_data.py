"""bert4rec/gen_data_fin.py + masking.py: instances as the original builds them, deterministic, atomic."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bert4rec import data, gen_data_fin, masking
from common import tfrecords

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_SEQ_LENGTH, MAX_PREDICTIONS, MASKED_LM_PROB, DUPE_FACTOR, PROP_SLIDING_WINDOW = 10, 4, 0.3, 3, 0.3
STEP = 3  # int(0.3 * 10)
# Training sides (length - 1) around the window size and multiples of the step: 1, 9, 10, 11, 13, 14, 24, 30, ...
LENGTHS = [2, 3, 5, 10, 11, 12, 13, 14, 15, 16, 17, 20, 25, 31, 40, 2, 6, 8, 9, 11, 12, 18, 21, 22, 7, 4, 3, 10, 26, 33]


def _fixture_sequences():
    """30 users (ids 100, 103, ...), items 1..25 with skewed popularity."""
    rng = np.random.default_rng(2024)
    popularity = 1.0 / np.arange(1, 26)
    return {100 + 3 * index: rng.choice(np.arange(1, 26), size=length, p=popularity / popularity.sum()).tolist()
            for index, length in enumerate(LENGTHS)}


@pytest.fixture
def toy_dir(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    lines = [f"{user} {item}\n" for user, items in _fixture_sequences().items() for item in items]
    (data_dir / "toy.txt").write_text("".join(lines))
    return data_dir


def _generate(data_dir, output_dir, **overrides):
    flags = dict(data_dir=str(data_dir), output_dir=str(output_dir), max_seq_length=MAX_SEQ_LENGTH,
                 max_predictions_per_seq=MAX_PREDICTIONS, masked_lm_prob=MASKED_LM_PROB, mask_prob=1.0,
                 dupe_factor=DUPE_FACTOR, prop_sliding_window=PROP_SLIDING_WINDOW, signature="-t", pool_size=1,
                 random_seed=12345, show_progress=False)
    flags.update(overrides)
    return gen_data_fin.generate("toy", **flags)


def _read_instances(path):
    spec = data.bert4rec_feature_spec(MAX_SEQ_LENGTH, MAX_PREDICTIONS)
    batches = list(tfrecords.make_dataset(str(path), spec, batch_size=100000, is_training=False).as_numpy_iterator())
    return {name: np.concatenate([batch[name] for batch in batches]) for name in spec}


def _original_windows(sequence, max_seq_length, step):
    """The original's window cut, written out independently of masking.sliding_windows."""
    if len(sequence) <= max_seq_length:
        return [sequence]
    begins = list(range(len(sequence) - max_seq_length, 0, -step)) + [0]
    return [sequence[begin:begin + max_seq_length] for begin in begins[::-1]]


def _expected_masks(length):
    wanted = max(1, int(np.floor(length * MASKED_LM_PROB + 0.5)))  # Python 2 round (no exact halves here)
    return min(MAX_PREDICTIONS, wanted, length)


def test_instances_follow_the_original_semantics(toy_dir, tmp_path):
    output_dir = tmp_path / "out"
    summary = _generate(toy_dir, output_dir)
    sequences = _fixture_sequences()
    vocab = data.load_vocab(output_dir / "toy-t.vocab")
    model = {user: vocab.to_model_ids(items).tolist() for user, items in sequences.items()}

    # Vocabulary: descending frequency over whole histories, ties by first appearance; [MASK] right after the items.
    counts = collections.Counter(item for items in sequences.values() for item in items)
    assert vocab.item_ids.tolist() == [item for item, _ in counts.most_common()]
    assert (vocab.num_items, vocab.mask_id, vocab.vocab_size) == (25, 26, 29)
    assert data.load_histories(output_dir / "toy-t.his") == model

    windows = [(user, window) for user in sequences
               for window in _original_windows(model[user][:-1], MAX_SEQ_LENGTH, STEP)]
    assert len(windows) == sum(len(_original_windows(items[:-1], MAX_SEQ_LENGTH, STEP)) for items in sequences.values())
    assert [len(_original_windows(list(range(n)), 10, 3)) for n in (1, 10, 11, 13, 14, 39)] == [1, 1, 2, 2, 3, 11]
    train = _read_instances(output_dir / "toy-t.train.tfrecord")
    assert len(train["info"]) == (DUPE_FACTOR + 1) * len(windows)  # dupe passes + one last-item pass

    # The file holds the plan (passes in order, users in order) sorted by each instance's shuffle key.
    window_numbers = [sum(1 for other, _ in windows[:k] if other == user) for k, (user, _) in enumerate(windows)]
    plan_passes = np.repeat(np.arange(DUPE_FACTOR + 1), len(windows))
    plan_keys = masking.shuffle_keys(12345, np.tile([user for user, _ in windows], DUPE_FACTOR + 1), plan_passes,
                                     np.tile(window_numbers, DUPE_FACTOR + 1))
    file_order = np.argsort(plan_keys, kind="stable")
    masked_sets = collections.defaultdict(set)
    for index in range(len(train["info"])):
        plan_index = int(file_order[index])
        pass_index, (user, window) = divmod(plan_index, len(windows))[0], windows[plan_index % len(windows)]
        length = len(window)
        padded = np.array(window + [0] * (MAX_SEQ_LENGTH - length))
        weights = train["masked_lm_weights"][index]
        count = int(weights.sum())
        positions = train["masked_lm_positions"][index][:count]
        assert train["info"][index].tolist() == [user]
        assert train["input_mask"][index].tolist() == [1] * length + [0] * (MAX_SEQ_LENGTH - length)
        assert weights.tolist() == [1.0] * count + [0.0] * (MAX_PREDICTIONS - count)
        assert train["masked_lm_positions"][index][count:].tolist() == [0] * (MAX_PREDICTIONS - count)
        if pass_index == DUPE_FACTOR:
            assert positions.tolist() == [length - 1]  # the extra instance masks only the last item
        else:
            assert count == _expected_masks(length)
            assert np.all(np.diff(positions) > 0) and positions.max() < length
            masked_sets[(user, tuple(window))].add(tuple(positions))
        assert train["masked_lm_ids"][index][:count].tolist() == padded[positions].tolist()
        expected_input = padded.copy()
        expected_input[positions] = vocab.mask_id  # mask_prob = 1.0: every chosen position becomes [MASK]
        assert train["input_ids"][index].tolist() == expected_input.tolist()
    assert any(len(sets) > 1 for sets in masked_sets.values())  # passes draw fresh masks

    test = _read_instances(output_dir / "toy-t.test.tfrecord")
    assert test["info"][:, 0].tolist() == list(sequences)
    for index, user in enumerate(sequences):
        history = model[user][-MAX_SEQ_LENGTH:]
        length = len(history)
        assert test["masked_lm_ids"][index].tolist() == [model[user][-1]] + [0] * (MAX_PREDICTIONS - 1)
        assert test["masked_lm_positions"][index][0] == length - 1
        assert test["masked_lm_weights"][index].tolist() == [1.0] + [0.0] * (MAX_PREDICTIONS - 1)
        assert test["input_ids"][index].tolist() == history[:-1] + [vocab.mask_id] + [0] * (MAX_SEQ_LENGTH - length)

    assert summary == json.loads((output_dir / "toy-t.summary.json").read_text())
    assert summary["users"] == 30 and summary["items"] == 25 and summary["vocab_size"] == 29
    assert summary["train"]["windows_per_pass"] == len(windows)
    assert summary["train"]["instances"] == len(train["info"])
    assert summary["train"]["masked_positions"] == int(train["masked_lm_weights"].sum())
    assert summary["test"] == {"instances": 30, "masked_positions": 30}


def test_outputs_are_byte_identical_across_pool_sizes_and_runs(toy_dir, tmp_path, monkeypatch):
    def run(name, **overrides):
        _generate(toy_dir, tmp_path / name, **overrides)
        return {file: (tmp_path / name / file).read_bytes() for file in sorted(os.listdir(tmp_path / name))}

    single = run("single")
    assert len(single) == 5
    assert run("two_workers", pool_size=2) == single
    assert run("again") == single
    monkeypatch.setattr(gen_data_fin, "CELLS_PER_TASK", 40)  # many small work units instead of one
    assert len(gen_data_fin.plan_tasks(np.full(30, 20), DUPE_FACTOR, 40)) > 30
    assert run("small_tasks", pool_size=2) == single
    monkeypatch.setattr(gen_data_fin, "BUCKET_BYTES", 6_000)  # the external sort: key-range buckets on disk
    assert gen_data_fin.bucket_bits_for(160, MAX_SEQ_LENGTH, MAX_PREDICTIONS) >= 2
    assert run("buckets", pool_size=2) == single
    other_seed = run("other_seed", random_seed=7)
    assert other_seed["toy-t.train.tfrecord"] != single["toy-t.train.tfrecord"]
    assert other_seed["toy-t.test.tfrecord"] == single["toy-t.test.tfrecord"]  # test instances have no randomness


def test_last_item_instances_spread_evenly_through_the_file_and_an_epochs_batches(tmp_path):
    """The original shuffles all instances before writing; writing pass after pass put the last-item pass at the
    end of the file, where a shuffle buffer much smaller than the file cannot mix it into the early batches."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with open(data_dir / "spread.txt", "w") as handle:  # training sides of 10..30 items: random passes mask >= 2
        for user in range(1, 401):
            handle.writelines(f"{user} {item}\n" for item in rng.integers(1, 60, size=rng.integers(11, 32)))
    gen_data_fin.generate("spread", data_dir=str(data_dir), output_dir=str(data_dir), max_seq_length=20,
                          max_predictions_per_seq=8, masked_lm_prob=0.2, dupe_factor=10, prop_sliding_window=0.5,
                          signature="", pool_size=1, show_progress=False)
    spec = data.bert4rec_feature_spec(20, 8)
    path = str(data_dir / "spread.train.tfrecord")
    weights = np.concatenate([batch["masked_lm_weights"] for batch in tfrecords.make_dataset(
        path, spec, batch_size=1000, is_training=False).as_numpy_iterator()])
    is_last_item = weights.sum(axis=1) == 1
    share = 1 / 11  # one last-item pass in 11
    assert abs(is_last_item.mean() - share) < 1e-9 * len(is_last_item) + 0.002

    def worst_deviation(flags, parts):
        return max(abs(part.mean() - share) for part in np.array_split(flags, parts))

    assert worst_deviation(is_last_item, 10) < 0.035  # every tenth of the file: ~9% (binomial sd ~1.1%)
    assert worst_deviation(np.sort(is_last_item), 10) > 0.5  # the check bites: pass-after-pass order fails it

    # One epoch as training reads it (shuffle buffer ~15% of the file, as 10,000 of ml-1m's 66,440): every
    # tenth of the epoch's batches holds ~9% last-item instances.
    dataset = tfrecords.make_dataset(path, spec, batch_size=64, is_training=True, seed=1,
                                     shuffle_buffer=len(weights) // 7)
    epoch = [batch["masked_lm_weights"].sum(axis=1) == 1
             for batch in dataset.take(len(weights) // 64).as_numpy_iterator()]
    assert worst_deviation(np.concatenate(epoch), 10) < 0.035
    del tf


def test_plan_tasks_covers_every_pass_and_user_in_file_order():
    small = gen_data_fin.plan_tasks(np.array([10, 10, 10]), dupe_factor=5, cells_per_task=60)
    assert small == [("train", 0, 2, 0, 3), ("train", 2, 4, 0, 3), ("train", 4, 5, 0, 3),
                     ("train_last", 5, 6, 0, 3), ("test", 0, 1, 0, 3)]
    large = gen_data_fin.plan_tasks(np.array([10, 10, 10]), dupe_factor=2, cells_per_task=15)
    train_units = [(task[1], task[3], task[4]) for task in large if task[0] == "train"]
    assert [unit[0] for unit in train_units] == sorted(unit[0] for unit in train_units)  # pass-major
    for pass_index in range(2):
        ranges = [(begin, end) for unit_pass, begin, end in train_units if unit_pass == pass_index]
        assert ranges[0][0] == 0 and ranges[-1][1] == 3 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_num_to_predict_rounds_like_python2_and_caps():
    counts = masking.num_to_predict([1, 2, 5, 10, 100, 3], masked_lm_prob=0.5, max_predictions_per_seq=20)
    assert counts.tolist() == [1, 1, 3, 5, 20, 2]  # 2.5 -> 3 and 1.5 -> 2 (halves up), at least 1, at most 20
    assert masking.num_to_predict([4], masked_lm_prob=2.0, max_predictions_per_seq=9).tolist() == [4]


def test_window_starts_and_vectorised_windows_agree():
    assert masking.window_starts(25, 10, 3) == [0, 3, 6, 9, 12, 15]
    assert masking.window_starts(10, 10, 3) == [0]
    assert masking.window_starts(14, 10, 3) == [0, 1, 4]
    lengths = np.array([1, 10, 11, 14, 25])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.arange(1, offsets[-1] + 1)
    windows = masking.sliding_windows(np.array([5, 6, 7, 8, 9]), offsets, items, 10, 3)
    expected = [(user, items[offsets[k] + start:offsets[k] + start + min(length, 10)].tolist())
                for k, (user, length) in enumerate(zip([5, 6, 7, 8, 9], lengths))
                for start in masking.window_starts(length, 10, 3)]
    got = [(int(user), tokens[:length].tolist()) for user, tokens, length in
           zip(windows.users, windows.tokens, windows.lengths)]
    assert got == expected
    assert windows.window_index.tolist() == [0, 0, 0, 1, 0, 1, 2, 0, 1, 2, 3, 4, 5]


def test_mask_prob_splits_mask_keep_and_random_like_the_original():
    rows, length, num_items = 4000, 20, 1000
    tokens = np.tile(np.arange(1, length + 1), (rows, 1))
    windows = masking.Windows(users=np.arange(rows), window_index=np.zeros(rows, dtype=np.int64), tokens=tokens,
                              lengths=np.full(rows, length))
    instances = masking.mask_random(windows, seed=1, pass_index=0, masked_lm_prob=0.25, max_predictions_per_seq=5,
                                    mask_prob=0.6, num_items=num_items, mask_id=num_items + 1)
    rows_index, slots = np.nonzero(instances.masked_lm_weights)
    positions = instances.masked_lm_positions[rows_index, slots]
    chosen = instances.input_ids[rows_index, positions]
    original = instances.masked_lm_ids[rows_index, slots]
    assert len(chosen) == rows * 5
    is_mask = chosen == num_items + 1
    kept = chosen == original
    assert abs(is_mask.mean() - 0.6) < 0.02
    assert abs(kept.mean() - 0.2) < 0.02  # half of the rest kept (plus a 1/1000 chance of a random hit)
    random_items = chosen[~is_mask & ~kept]
    assert abs(len(random_items) / len(chosen) - 0.2) < 0.02
    assert random_items.min() >= 1 and random_items.max() <= num_items and len(np.unique(random_items)) > 500
    assert abs(np.bincount(positions, minlength=length) / len(positions) - 1 / length).max() < 0.01  # uniform
    unmasked = np.ones_like(tokens, dtype=bool)
    unmasked[rows_index, positions] = False
    assert np.array_equal(instances.input_ids[unmasked], tokens[unmasked])


@pytest.mark.parametrize("text, line, fragment", [
    ("100 1\n100 2\n101 x\n101 3\n", 3, "two integers"),
    ("100 1\n100 2\n101 3\n102 4\n102 5\n", 3, "user 101 has 1 item"),
    ("", 1, "empty file"),
])
def test_bad_input_names_file_and_line_and_leaves_no_output(tmp_path, text, line, fragment):
    (tmp_path / "toy.txt").write_text(text)
    output_dir = tmp_path / "out"
    with pytest.raises(data.DataError) as error:
        _generate(tmp_path, output_dir)
    assert f"{tmp_path / 'toy.txt'}:{line}:" in str(error.value) and fragment in str(error.value)
    assert not output_dir.exists() or os.listdir(output_dir) == []


def test_failure_while_writing_leaves_nothing(toy_dir, tmp_path, monkeypatch):
    calls = []
    real_run_task = masking.run_task

    def failing_run_task(task):
        calls.append(task)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real_run_task(task)

    monkeypatch.setattr(masking, "run_task", failing_run_task)
    output_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk on fire"):
        _generate(toy_dir, output_dir)
    assert os.listdir(output_dir) == []


def test_flag_validation():
    with pytest.raises(ValueError, match="prop_sliding_window"):
        masking.sliding_step(10, 0.05)
    assert masking.sliding_step(10, -1.0) == 10
    with pytest.raises(ValueError, match="mask_prob"):
        gen_data_fin.generate("toy", mask_prob=1.5)


def test_script_runs_as_file_from_its_directory_and_as_module(toy_dir, tmp_path):
    args = ["--dataset_name=toy", f"--data_dir={toy_dir}", "--max_seq_length=10", "--max_predictions_per_seq=4",
            "--masked_lm_prob=0.3", "--dupe_factor=2", "--prop_sliding_window=0.3", "--signature=-s"]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    invocations = [
        ([sys.executable, "bert4rec/gen_data_fin.py", "--pool_size=2"], REPO_ROOT),  # forked workers
        ([sys.executable, "gen_data_fin.py", "--pool_size=1"], os.path.join(REPO_ROOT, "bert4rec")),
        ([sys.executable, "-m", "bert4rec.gen_data_fin", "--pool_size=1"], REPO_ROOT),
    ]
    outputs = []
    for index, (command, cwd) in enumerate(invocations):
        output_dir = tmp_path / f"out{index}"
        result = subprocess.run(command + args + [f"--output_dir={output_dir}"], cwd=cwd, env=environment,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "toy-s: 30 users, 25 items, vocab_size 29" in result.stdout
        outputs.append((output_dir / "toy-s.train.tfrecord").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]

    (toy_dir / "bad.txt").write_text("1 2\n1 two\n")
    result = subprocess.run([sys.executable, "-m", "bert4rec.gen_data_fin", "--dataset_name=bad", f"--data_dir={toy_dir}",
                             f"--output_dir={tmp_path / 'bad_out'}"], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "bad.txt:2: expected two integers" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bad_out").exists() or os.listdir(tmp_path / "bad_out") == []


def test_more_last_item_passes_repeat_the_last_item_instances_and_keep_the_rest(toy_dir, tmp_path):
    one = _generate(toy_dir, tmp_path / "one")
    three = _generate(toy_dir, tmp_path / "three", last_item_passes=3)
    windows = one["train"]["windows_per_pass"]
    assert three["train"]["last_item_instances"] == 3 * one["train"]["last_item_instances"] == 3 * windows
    assert three["train"]["random_mask_instances"] == one["train"]["random_mask_instances"]

    def instance_counts(path):
        instances = _read_instances(path)
        rows = np.concatenate([instances["input_ids"], instances["masked_lm_positions"]], axis=1)
        unique, counts = np.unique(rows, axis=0, return_counts=True)
        return dict(zip(map(bytes, unique), counts))

    before, after = instance_counts(tmp_path / "one" / "toy-t.train.tfrecord"), instance_counts(
        tmp_path / "three" / "toy-t.train.tfrecord")
    is_last_item = {key for key in after if after[key] != before.get(key)}
    assert sum(after[key] - before[key] for key in is_last_item) == 2 * windows  # two more copies of each
    assert _generate(toy_dir, tmp_path / "none", last_item_passes=0)["train"]["last_item_instances"] == 0
    with pytest.raises(ValueError, match="last_item_passes"):
        _generate(toy_dir, tmp_path / "bad", last_item_passes=-1)
