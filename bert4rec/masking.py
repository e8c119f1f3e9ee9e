"""BERT4Rec training/test instances: sliding windows and Cloze masks, vectorised over many users at once.

Semantics follow the original `gen_data_fin.py`:
  * windows: a sequence longer than `max_seq_length` is cut into windows of that length whose starts step back by
    `int(prop_sliding_window * max_seq_length)` from the last item, plus one window at the very start;
  * masks: `min(max_predictions_per_seq, max(1, round(len * masked_lm_prob)))` positions chosen uniformly; each is
    [MASK] with probability `mask_prob`, else kept or replaced by a uniformly random item (half each);
    Python 2's round (halves away from zero) as the original ran under Python 2;
  * "mask last": only the last item of a window is masked (the extra training instances and the test instances);
  * features are right-padded with 0, like the original.
Randomness is counter-based: every (seed, user, pass, window) has its own SplitMix64 stream, and position j of the
window uses outputs 4j..4j+3 of it, so an instance depends on nothing but its own coordinates: results do not depend
on chunking, worker count or the other users.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common.tfrecords import frame_records, serialize_int_examples

_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment
_DRAWS_PER_POSITION = 4  # order key, [MASK]-or-not, keep-or-random, random item
_ORDER, _MASK_DRAW, _KEEP_DRAW, _RANDOM_ITEM_DRAW = range(_DRAWS_PER_POSITION)
_POSITION_BITS = 16  # low bits of a position's order key: the position itself (so max_seq_length < 65536)
_POSITION_MASK = (1 << _POSITION_BITS) - 1
_SHUFFLE_COUNTER = 1 << 40  # a stream output no position uses (positions use 4j..4j+3, j < 65536): the file-order key


# ----------------------------------------------------------------------------------------------------------
# Counter-based random numbers.


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (a bijection on uint64 with strong avalanche)."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _as_uint64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).astype(np.uint64)  # negative ids wrap, which is fine for hashing


def stream_keys(seed: int, users, pass_index, window_index) -> np.ndarray:
    """One SplitMix64 seed per (seed, user, pass, window); arguments broadcast against each other."""
    users, pass_index, window_index = np.broadcast_arrays(_as_uint64(users), _as_uint64(pass_index),
                                                          _as_uint64(window_index))
    keys = _mix64(np.full(users.shape, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64) + np.uint64(_GOLDEN_GAMMA))
    for value in (users, pass_index, window_index):
        keys = _mix64((keys ^ value) + np.uint64(_GOLDEN_GAMMA))
    return keys


def stream_output(keys: np.ndarray, counters) -> np.ndarray:
    """The `counters`-th output (0-based) of the SplitMix64 streams seeded with `keys`."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design (numpy warns only for scalars)
        return _mix64(keys + (_as_uint64(counters) + np.uint64(1)) * np.uint64(_GOLDEN_GAMMA))


def uniform_from_bits(bits: np.ndarray) -> np.ndarray:
    """float64 in [0, 1) from the top 53 of 64 random bits."""
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _below(bits: np.ndarray, bound: int) -> np.ndarray:
    """Integers in [0, bound) from random bits (multiply-shift; bias below bound / 2**32)."""
    return (((bits >> np.uint64(32)) * np.uint64(bound)) >> np.uint64(32)).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Windows.


def sliding_step(max_seq_length: int, prop_sliding_window: float) -> int:
    """The original's window step; -1.0 means non-overlapping windows."""
    step = max_seq_length if prop_sliding_window == -1.0 else int(prop_sliding_window * max_seq_length)
    if step < 1:
        raise ValueError(f"prop_sliding_window * max_seq_length must be at least 1 (got prop_sliding_window="
                         f"{prop_sliding_window}, max_seq_length={max_seq_length})")
    return step


def window_starts(length: int, max_seq_length: int, step: int) -> list[int]:
    """Start offsets of the windows over a sequence of `length` items, in sequence order."""
    if length <= max_seq_length:
        return [0]
    return [0] + list(range(length - max_seq_length, 0, -step))[::-1]


class Windows:
    """Token windows, one a row, right-padded with 0."""

    __slots__ = ("users", "window_index", "tokens", "lengths")  # plain classes: dataclasses cost CLI start-up time

    def __init__(self, users: np.ndarray, window_index: np.ndarray, tokens: np.ndarray, lengths: np.ndarray):
        self.users = users  # int64 [W]: user index (the `info` feature)
        self.window_index = window_index  # int64 [W]: which window of its user this is (0 = first)
        self.tokens = tokens  # int64 [W, max_seq_length]
        self.lengths = lengths  # int64 [W]

    def __len__(self) -> int:
        return len(self.lengths)

    def tile(self, copies: int) -> "Windows":
        """All windows `copies` times over, one copy after the other (for several passes at once)."""
        return Windows(users=np.tile(self.users, copies), window_index=np.tile(self.window_index, copies),
                       tokens=np.tile(self.tokens, (copies, 1)), lengths=np.tile(self.lengths, copies))


def window_counts(sequence_lengths: np.ndarray, max_seq_length: int, step: int) -> np.ndarray:
    """How many windows each sequence is cut into."""
    sequence_lengths = np.asarray(sequence_lengths, dtype=np.int64)
    return np.where(sequence_lengths > max_seq_length, -(-(sequence_lengths - max_seq_length) // step) + 1, 1)


def _gather_windows(users, offsets, items, starts, lengths, window_user, window_index, max_seq_length) -> Windows:
    columns = np.arange(max_seq_length)
    valid = columns < lengths[:, None]
    source = offsets[window_user][:, None] + starts[:, None] + columns
    tokens = np.where(valid, items[np.where(valid, source, 0)], 0).astype(np.int64)
    return Windows(users=users[window_user].astype(np.int64), window_index=window_index.astype(np.int64),
                   tokens=tokens, lengths=lengths.astype(np.int64))


def sliding_windows(users: np.ndarray, offsets: np.ndarray, items: np.ndarray, max_seq_length: int, step: int) -> Windows:
    """All windows of the sequences `items[offsets[k]:offsets[k + 1]]` (user `users[k]`), users in order."""
    sequence_lengths = np.diff(offsets)
    if np.any(sequence_lengths < 1):
        raise ValueError("every sequence needs at least one item")
    counts = window_counts(sequence_lengths, max_seq_length, step)
    window_user = np.repeat(np.arange(len(counts)), counts)
    window_index = np.arange(len(window_user)) - np.repeat(np.cumsum(counts) - counts, counts)
    length, count = sequence_lengths[window_user], counts[window_user]
    # Window t of c (t >= 1) starts (c - 1 - t) steps before the last full window, which ends at the last item.
    starts = np.where((length <= max_seq_length) | (window_index == 0), 0,
                      length - max_seq_length - step * (count - 1 - window_index))
    return _gather_windows(users, offsets, items, starts, np.minimum(length, max_seq_length), window_user,
                           window_index, max_seq_length)


def last_windows(users: np.ndarray, offsets: np.ndarray, items: np.ndarray, max_seq_length: int) -> Windows:
    """The last `max_seq_length` items of every sequence (the test instances' input)."""
    sequence_lengths = np.diff(offsets)
    lengths = np.minimum(sequence_lengths, max_seq_length)
    window_user = np.arange(len(users))
    return _gather_windows(users, offsets, items, sequence_lengths - lengths, lengths, window_user,
                           np.zeros(len(users), dtype=np.int64), max_seq_length)


# ----------------------------------------------------------------------------------------------------------
# Masks.


def round_half_up(values) -> np.ndarray:
    """Python 2's round() for non-negative floats: halves go up (Python 3 would round them to even)."""
    values = np.asarray(values, dtype=np.float64)
    floor = np.floor(values)
    return (floor + (values - floor >= 0.5)).astype(np.int64)


def num_to_predict(lengths, masked_lm_prob: float, max_predictions_per_seq: int) -> np.ndarray:
    """How many positions the original masks in a window of each length (never more than the window has)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    wanted = np.minimum(max_predictions_per_seq, np.maximum(1, round_half_up(lengths * masked_lm_prob)))
    return np.minimum(wanted, lengths)


class MaskedInstances:
    """Model inputs and Cloze targets, one instance a row; the feature layout of the original TFRecords."""

    FEATURES = ("info", "input_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights")
    __slots__ = FEATURES

    def __init__(self, info, input_ids, input_mask, masked_lm_positions, masked_lm_ids, masked_lm_weights):
        self.info = info  # [N, 1]
        self.input_ids = input_ids  # [N, max_seq_length]
        self.input_mask = input_mask  # [N, max_seq_length]
        self.masked_lm_positions = masked_lm_positions  # [N, max_predictions_per_seq]
        self.masked_lm_ids = masked_lm_ids  # [N, max_predictions_per_seq]
        self.masked_lm_weights = masked_lm_weights  # float32 [N, max_predictions_per_seq]

    def __len__(self) -> int:
        return len(self.info)

    @property
    def num_masked(self) -> int:
        return int(np.count_nonzero(self.masked_lm_weights))

    def take(self, order: np.ndarray) -> "MaskedInstances":
        """The instances in `order` (row indices)."""
        return MaskedInstances(*(getattr(self, name)[order] for name in self.FEATURES))

    def serialize(self):
        """The instances as serialized tf.train.Examples (`common.tfrecords.PackedRecords`)."""
        int_features = {name: getattr(self, name) for name in self.FEATURES if name != "masked_lm_weights"}
        return serialize_int_examples(int_features, {"masked_lm_weights": self.masked_lm_weights})


def _instances(windows: Windows, input_ids: np.ndarray, rows: np.ndarray, columns: np.ndarray, per_row: np.ndarray,
               max_predictions_per_seq: int) -> MaskedInstances:
    """Assembles features; (rows, columns) are the masked positions in row-major order, `per_row[w]` in row w."""
    count = len(windows)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row)  # rank within its row
    positions = np.zeros((count, max_predictions_per_seq), dtype=np.int64)
    labels = np.zeros((count, max_predictions_per_seq), dtype=np.int64)
    weights = np.zeros((count, max_predictions_per_seq), dtype=np.float32)
    positions[rows, slot] = columns
    labels[rows, slot] = windows.tokens[rows, columns]
    weights[rows, slot] = 1.0
    input_mask = (np.arange(windows.tokens.shape[1]) < windows.lengths[:, None]).view(np.int8)  # 0/1, compact
    return MaskedInstances(info=windows.users[:, None], input_ids=input_ids, input_mask=input_mask,
                           masked_lm_positions=positions, masked_lm_ids=labels, masked_lm_weights=weights)


def mask_random(windows: Windows, *, seed: int, pass_index, masked_lm_prob: float, max_predictions_per_seq: int,
                mask_prob: float, num_items: int, mask_id: int) -> MaskedInstances:
    """One Cloze-masked training instance per window, with the randomness of (seed, user, pass, window).

    `pass_index` is one pass for all windows or one per window (several passes in one call).
    """
    max_seq_length = windows.tokens.shape[1]
    if max_seq_length > _POSITION_MASK:
        raise ValueError(f"max_seq_length must be below {_POSITION_MASK + 1}, got {max_seq_length}")
    counts = num_to_predict(windows.lengths, masked_lm_prob, max_predictions_per_seq)
    keys = stream_keys(seed, windows.users, pass_index, windows.window_index)[:, None]
    position_counters = np.arange(max_seq_length) * _DRAWS_PER_POSITION
    # The `count` positions with the smallest random keys: a uniform sample, like shuffling and taking a prefix.
    # The low bits hold the position, so keys are distinct and "at most the count-th smallest" selects exactly count.
    positions = np.arange(max_seq_length, dtype=np.uint64)
    order_keys = (stream_output(keys, position_counters + _ORDER) & ~np.uint64(_POSITION_MASK)) | positions
    order_keys[np.arange(max_seq_length) >= windows.lengths[:, None]] = np.uint64(0xFFFFFFFFFFFFFFFF)  # padding
    threshold = np.take_along_axis(np.sort(order_keys, axis=1), (counts - 1)[:, None], axis=1)
    rows, columns = np.nonzero(order_keys <= threshold)

    input_ids = windows.tokens.copy()
    if mask_prob >= 1.0:  # every chosen position becomes [MASK]; the other draws would not matter
        input_ids[rows, columns] = mask_id
    else:  # counter-based draws: skipping some never shifts the others
        row_keys, counters = keys[rows, 0], columns * _DRAWS_PER_POSITION
        use_mask = uniform_from_bits(stream_output(row_keys, counters + _MASK_DRAW)) < mask_prob
        keep = uniform_from_bits(stream_output(row_keys, counters + _KEEP_DRAW)) < 0.5
        random_items = _below(stream_output(row_keys, counters + _RANDOM_ITEM_DRAW), num_items) + 1
        originals = windows.tokens[rows, columns]
        input_ids[rows, columns] = np.where(use_mask, mask_id, np.where(keep, originals, random_items))
    return _instances(windows, input_ids, rows, columns, counts, max_predictions_per_seq)


def mask_last(windows: Windows, *, max_predictions_per_seq: int, mask_id: int) -> MaskedInstances:
    """One instance per window with only its last item masked (no randomness)."""
    rows = np.arange(len(windows))
    columns = windows.lengths - 1
    input_ids = windows.tokens.copy()
    input_ids[rows, columns] = mask_id
    return _instances(windows, input_ids, rows, columns, np.ones(len(windows), dtype=np.int64), max_predictions_per_seq)


# ----------------------------------------------------------------------------------------------------------
# Work units for gen_data_fin (run in worker processes; arguments are plain and picklable).


class MaskingConfig(NamedTuple):
    max_seq_length: int
    max_predictions_per_seq: int
    masked_lm_prob: float
    mask_prob: float
    sliding_step: int
    seed: int
    num_items: int
    mask_id: int
    bucket_bits: int = 0  # training records come grouped by the top bits of their shuffle key (see gen_data_fin)


def shuffle_keys(seed: int, users, pass_index, window_index) -> np.ndarray:
    """uint64 key of each training instance: the training file holds instances in ascending key order.

    A hash of the instance's (seed, user, pass, window) coordinates, so sorting by it is a seeded uniform
    permutation of the whole set that no chunking or worker count can change (the original shuffles all
    instances before writing).
    """
    return stream_output(stream_keys(seed, users, pass_index, window_index), _SHUFFLE_COUNTER)


class EncodedRun(NamedTuple):
    """Framed TFRecords of some instances (`frame_lengths` bytes each), grouped by key bucket (stable)."""

    framed: bytes
    keys: np.ndarray  # uint64 shuffle keys, in record order
    frame_lengths: np.ndarray  # int64
    instances: int
    masked: int


def encode_training_chunk(config: MaskingConfig, users: np.ndarray, offsets: np.ndarray, items: np.ndarray,
                          pass_start: int, pass_stop: int, last_item_pass: bool) -> EncodedRun:
    """Passes [pass_start, pass_stop) over some users' training sides as framed TFRecords with their shuffle keys.

    Records are grouped by the top `config.bucket_bits` bits of their key (plan order within a group), so the
    writer can hand each group to its bucket. The last-item pass has no masking randomness (its place in the
    file is still shuffled).
    """
    windows = sliding_windows(users, offsets, items, config.max_seq_length, config.sliding_step)
    passes = np.repeat(np.arange(pass_start, pass_stop), len(windows))  # one call for all passes: bigger arrays
    windows = windows.tile(pass_stop - pass_start)
    if last_item_pass:  # several last-item passes repeat the same instances, each at its own shuffled places
        instances = mask_last(windows, max_predictions_per_seq=config.max_predictions_per_seq, mask_id=config.mask_id)
        window_index = windows.window_index
    else:
        instances = mask_random(windows, seed=config.seed, pass_index=passes,
                                masked_lm_prob=config.masked_lm_prob,
                                max_predictions_per_seq=config.max_predictions_per_seq, mask_prob=config.mask_prob,
                                num_items=config.num_items, mask_id=config.mask_id)
        window_index = windows.window_index
    keys = shuffle_keys(config.seed, windows.users, passes, window_index)
    if config.bucket_bits:
        order = np.argsort(keys >> np.uint64(64 - config.bucket_bits), kind="stable")
        instances, keys = instances.take(order), keys[order]
    records = instances.serialize()
    return EncodedRun(frame_records(records), keys, records.lengths.astype(np.int64) + 16, len(instances),
                      instances.num_masked)


def encode_test_chunk(config: MaskingConfig, users: np.ndarray, offsets: np.ndarray, items: np.ndarray) -> tuple[bytes, int, int]:
    """Framed TFRecord bytes of the test instances (whole histories, last item masked) of some users."""
    windows = last_windows(users, offsets, items, config.max_seq_length)
    instances = mask_last(windows, max_predictions_per_seq=config.max_predictions_per_seq, mask_id=config.mask_id)
    return frame_records(instances.serialize()), len(instances), instances.num_masked


_worker_state: dict = {}


def init_worker(config: MaskingConfig, users: np.ndarray, train_offsets: np.ndarray, train_items: np.ndarray,
                test_offsets: np.ndarray, test_items: np.ndarray) -> None:
    """Gives a worker process the whole data set once, so that tasks are just (kind, pass, user range)."""
    _worker_state.update(config=config, users=users, train=(train_offsets, train_items), test=(test_offsets, test_items))


def clear_worker() -> None:
    _worker_state.clear()


def run_task(task: tuple[str, int, int, int, int]):
    """Encodes users [begin, end) for passes [pass_start, pass_stop) of one kind ("train", "train_last", "test"):
    an `EncodedRun` for training kinds, (framed bytes, instances, masked positions) for "test"."""
    kind, pass_start, pass_stop, begin, end = task
    offsets, items = _worker_state["test" if kind == "test" else "train"]
    chunk_offsets = offsets[begin:end + 1] - offsets[begin]
    chunk_items = items[offsets[begin]:offsets[end]]
    users, config = _worker_state["users"][begin:end], _worker_state["config"]
    if kind == "test":
        return encode_test_chunk(config, users, chunk_offsets, chunk_items)
    return encode_training_chunk(config, users, chunk_offsets, chunk_items, pass_start, pass_stop,
                                 last_item_pass=kind == "train_last")
