"""TFRecord files of int64/float/bytes Examples: fast numpy writing without TensorFlow, tf.data reading.

Writing never imports TensorFlow (data generation stays light and fast): Examples are protobuf-encoded by
hand and TFRecord frames are checksummed with a numpy CRC-32C that processes thousands of records at once.
The bytes are identical to `tf.train.Example.SerializeToString(deterministic=True)` and `tf.io.TFRecordWriter`
(tests check both). Reading (`parse_int_features`, `make_dataset`) imports TensorFlow lazily.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from common import io_utils

_UINT64_MASK = (1 << 64) - 1
_PENDING_RECORDS_PER_FLUSH = 1024  # single writes are buffered so that framing stays vectorised
_CRC_MATRIX_BUDGET_BYTES = 8 << 20  # bounds the padded record matrix used by the batched CRC

# Protobuf tags (field number << 3 | wire type 2) of the fields an Example uses.
_TAG_EXAMPLE_FEATURES = 0x0A  # Example.features
_TAG_FEATURES_ENTRY = 0x0A  # Features.feature (map entry)
_TAG_ENTRY_KEY = 0x0A  # map entry key
_TAG_ENTRY_VALUE = 0x12  # map entry value
_TAG_BYTES_LIST = 0x0A  # Feature.bytes_list
_TAG_FLOAT_LIST = 0x12  # Feature.float_list
_TAG_INT64_LIST = 0x1A  # Feature.int64_list
_TAG_PACKED_VALUES = 0x0A  # Int64List.value / FloatList.value (packed)
_TAG_BYTES_VALUE = 0x0A  # BytesList.value (repeated, one tag per value)


# ----------------------------------------------------------------------------------------------------------
# Single-record encoding: plain Python, the readable reference for the batched encoder below.


def _varint(value: int) -> bytes:
    value &= _UINT64_MASK  # negative int64 values are encoded as their two's complement (10 bytes)
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _varint(len(payload)) + payload


def _check_feature_names(int_features: Mapping, float_features: Mapping,
                         bytes_features: Mapping | None = None) -> list[str]:
    bytes_features = bytes_features or {}
    kinds = (("int", int_features), ("float", float_features), ("bytes", bytes_features))
    for index, (kind, group) in enumerate(kinds):
        for other_kind, other in kinds[index + 1:]:
            overlap = set(group) & set(other)
            if overlap:
                raise ValueError(f"features {sorted(overlap)} are given both as {kind} and as {other_kind}")
    names = sorted(set(int_features) | set(float_features) | set(bytes_features))  # protobuf's deterministic map order
    if not names:
        raise ValueError("an Example needs at least one feature")
    for name in names:
        if not isinstance(name, str) or not name or len(name.encode("utf-8")) >= 128:
            raise ValueError(f"feature name must be a non-empty string under 128 bytes, got {name!r}")
    return names


def _as_bytes_values(value) -> list[bytes]:
    """One record's bytes feature: a str/bytes (one value) or a sequence of them; str is UTF-8 encoded."""
    if isinstance(value, (str, bytes, bytearray, np.str_, np.bytes_)):
        value = [value]
    return [item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in value]


def _bytes_list_payload(values: list[bytes]) -> bytes:
    return b"".join(_length_delimited(_TAG_BYTES_VALUE, item) for item in values)


def serialize_int_example(int_features: Mapping[str, Sequence[int]],
                          float_features: Mapping[str, Sequence[float]] | None = None,
                          bytes_features: Mapping[str, Sequence[bytes | str] | bytes | str] | None = None) -> bytes:
    """One `tf.train.Example` of int64 (and optionally float and bytes) lists, as deterministic protobuf bytes.

    A bytes feature is one str/bytes value or a sequence of them (str is UTF-8 encoded), e.g. raw text beside its ids.
    """
    float_features = float_features or {}
    bytes_features = bytes_features or {}
    entries = []
    for name in _check_feature_names(int_features, float_features, bytes_features):
        if name in int_features:
            values = [int(value) for value in int_features[name]]
            packed = b"".join(_varint(value) for value in values)
            feature = _length_delimited(_TAG_INT64_LIST, _length_delimited(_TAG_PACKED_VALUES, packed) if values else b"")
        elif name in float_features:
            values = [float(value) for value in float_features[name]]
            packed = struct.pack(f"<{len(values)}f", *values)
            feature = _length_delimited(_TAG_FLOAT_LIST, _length_delimited(_TAG_PACKED_VALUES, packed) if values else b"")
        else:
            feature = _length_delimited(_TAG_BYTES_LIST, _bytes_list_payload(_as_bytes_values(bytes_features[name])))
        entry = _length_delimited(_TAG_ENTRY_KEY, name.encode("utf-8")) + _length_delimited(_TAG_ENTRY_VALUE, feature)
        entries.append(_length_delimited(_TAG_FEATURES_ENTRY, entry))
    return _length_delimited(_TAG_EXAMPLE_FEATURES, b"".join(entries))


# ----------------------------------------------------------------------------------------------------------
# Batched encoding: many records of fixed-length features at once, as one flat byte buffer.


class PackedRecords(NamedTuple):
    """Many serialized records back to back: `data` (uint8) holds record i at its running offset, `lengths[i]` long."""

    data: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def to_list(self) -> list[bytes]:
        ends = np.cumsum(self.lengths)
        starts = ends - self.lengths
        raw = self.data.tobytes()
        return [raw[start:end] for start, end in zip(starts.tolist(), ends.tolist())]

    @classmethod
    def from_list(cls, records: Sequence[bytes]) -> "PackedRecords":
        lengths = np.fromiter((len(record) for record in records), dtype=np.int64, count=len(records))
        return cls(np.frombuffer(b"".join(records), dtype=np.uint8), lengths)


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes each unsigned value takes as a varint (1..10)."""
    sizes = np.ones(values.shape, dtype=np.int64)
    max_value = int(values.max()) if values.size else 0
    for shift in range(7, 64, 7):
        if max_value < (1 << shift):  # larger thresholds cannot be reached
            break
        sizes += values >= (1 << shift)
    return sizes


_TABLE_MAX_BITS = 20  # values below 2**20 (ids, lengths) are encoded by table lookup


@functools.lru_cache(maxsize=None)
def _varint_table(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes and validity of every value below 2**bits, each row packed into one uint16/uint32 scalar.

    Gathering scalars is several times faster than gathering byte rows; a row's bytes are recovered by `.view`.
    """
    encoded, valid = _varint_arithmetic(np.arange(1 << bits, dtype=np.uint32).reshape(-1, 1))
    packed_width = 2 if encoded.shape[1] <= 2 else 4
    padding = ((0, 0), (0, packed_width - encoded.shape[1]))
    packed_dtype = np.dtype(f"<u{packed_width}")
    return (np.ascontiguousarray(np.pad(encoded, padding)).view(packed_dtype)[:, 0],
            np.ascontiguousarray(np.pad(valid, padding)).view(packed_dtype)[:, 0])


def _varint_arithmetic(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = values.shape[0]
    sizes = _varint_sizes(values)
    width = int(sizes.max()) if sizes.size else 1
    byte_layers = []
    for index in range(width):
        layer = ((values >> (7 * index)) & 0x7F).astype(np.uint8)
        layer |= (sizes > index + 1).astype(np.uint8) << 7  # continuation bit: more bytes follow
        byte_layers.append(layer)
    encoded = np.stack(byte_layers, axis=-1)
    valid = np.arange(width) < sizes[..., None]
    return encoded.reshape(rows, -1), valid.reshape(rows, -1)


def _varint_piece(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Varint bytes of a [rows, n] int array as ([rows, n * width] bytes, validity mask or None if all are valid)."""
    rows = values.shape[0]
    if values.size == 0:
        return np.zeros((rows, 0), dtype=np.uint8), None
    if values.dtype.kind == "i" and values.min() < 0:
        values = values.astype(np.int64).astype(np.uint64)  # negative int64 are encoded as two's complement (10 bytes)
    max_value = int(values.max())
    if max_value < 0x80:  # one byte each, the common case for masks and positions
        return values.astype(np.uint8), None
    if max_value < (1 << _TABLE_MAX_BITS):
        packed_bytes, packed_valid = _varint_table(max(8, max_value.bit_length()))
        return packed_bytes[values].view(np.uint8).reshape(rows, -1), packed_valid[values].view(bool).reshape(rows, -1)
    return _varint_arithmetic(values.astype(np.uint32 if max_value < (1 << 32) else np.uint64))


def _constant_piece(payload: bytes, rows: int) -> tuple[np.ndarray, None]:
    return np.broadcast_to(np.frombuffer(payload, dtype=np.uint8), (rows, len(payload))), None


def _concatenate_pieces(pieces: list[tuple[np.ndarray, np.ndarray | None]]) -> PackedRecords:
    """Row i of the result is the concatenation of the valid bytes (all, if the mask is None) of every piece's row i."""
    encoded = np.hstack([piece for piece, _ in pieces])
    valid = np.ones(encoded.shape, dtype=bool)
    column = 0
    for piece, mask in pieces:
        if mask is not None:
            valid[:, column:column + piece.shape[1]] = mask
        column += piece.shape[1]
    # Boolean indexing reads row-major, which is exactly "each record's valid bytes in piece order".
    return PackedRecords(encoded[valid], valid.sum(axis=1, dtype=np.int64))


def _bytes_piece(payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length byte strings as a zero-padded [rows, longest] matrix and its validity mask."""
    lengths = np.fromiter((len(payload) for payload in payloads), dtype=np.int64, count=len(payloads))
    width = int(lengths.max()) if len(lengths) else 0
    valid = np.arange(width) < lengths[:, None]
    encoded = np.zeros(valid.shape, dtype=np.uint8)
    encoded[valid] = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    return encoded, valid


def serialize_int_examples(int_features: Mapping[str, np.ndarray],
                           float_features: Mapping[str, np.ndarray] | None = None,
                           bytes_features: Mapping[str, Sequence] | None = None) -> PackedRecords:
    """Many Examples at once: int/float features are [records, length] arrays; bytes as `serialize_int_example`.

    A bytes feature is a sequence over records of one str/bytes value each, or of a sequence of them.
    """
    float_features = float_features or {}
    bytes_features = bytes_features or {}
    names = _check_feature_names(int_features, float_features, bytes_features)
    arrays = {name: np.asarray(int_features[name] if name in int_features else float_features[name])
              for name in names if name not in bytes_features}
    for name, array in arrays.items():
        if array.ndim != 2:
            raise ValueError(f"feature {name!r} must be a [records, length] array, got shape {array.shape}")
    rows = {array.shape[0] for array in arrays.values()} | {len(values) for values in bytes_features.values()}
    if len(rows) != 1:
        raise ValueError(f"features disagree on the number of records: {sorted(rows)}")
    num_records = rows.pop()
    if num_records == 0:
        return PackedRecords(np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64))

    # Payloads first: every enclosing message's length depends on them.
    payloads, nested_lengths = {}, {}
    features_length = np.zeros(num_records, dtype=np.int64)
    for name in names:
        if name in bytes_features:
            payloads[name] = _bytes_piece([_bytes_list_payload(_as_bytes_values(value))
                                           for value in bytes_features[name]])
        elif name in int_features:
            values = arrays[name]
            payloads[name] = _varint_piece(values if values.dtype.kind in "iu" else values.astype(np.int64))
        else:
            little_endian = np.ascontiguousarray(arrays[name], dtype="<f4").view(np.uint8).reshape(num_records, -1)
            payloads[name] = (little_endian, None)
        encoded, valid = payloads[name]
        payload_length = (np.full(num_records, encoded.shape[1], dtype=np.int64) if valid is None
                          else valid.sum(axis=1, dtype=np.int64))
        if name in bytes_features:
            list_length = payload_length  # a BytesList is its repeated values, no packed wrapper
        elif arrays[name].shape[1] > 0:
            list_length = 1 + _varint_sizes(payload_length) + payload_length
        else:
            list_length = np.zeros(num_records, dtype=np.int64)  # protobuf omits an empty packed field
        feature_length = 1 + _varint_sizes(list_length) + list_length
        entry_length = 3 + len(name.encode("utf-8")) + _varint_sizes(feature_length) + feature_length
        features_length += 1 + _varint_sizes(entry_length) + entry_length
        nested_lengths[name] = (entry_length, feature_length, list_length, payload_length)

    # All length prefixes of all records in one varint encoding: column 0, then 4 columns a feature.
    length_columns = [features_length] + [column for name in names for column in nested_lengths[name]]
    length_bytes, length_valid = _varint_piece(np.stack(length_columns, axis=1))
    width = length_bytes.shape[1] // len(length_columns)

    def length_piece(column):
        columns = slice(column * width, (column + 1) * width)
        return length_bytes[:, columns], None if length_valid is None else length_valid[:, columns]

    pieces = [_constant_piece(bytes([_TAG_EXAMPLE_FEATURES]), num_records), length_piece(0)]
    for index, name in enumerate(names):
        key = name.encode("utf-8")
        entry, feature, value_list, payload = (1 + 4 * index + offset for offset in range(4))
        pieces.append(_constant_piece(bytes([_TAG_FEATURES_ENTRY]), num_records))
        pieces.append(length_piece(entry))
        pieces.append(_constant_piece(bytes([_TAG_ENTRY_KEY, len(key)]) + key + bytes([_TAG_ENTRY_VALUE]), num_records))
        pieces.append(length_piece(feature))
        list_tag = (_TAG_BYTES_LIST if name in bytes_features else
                    _TAG_INT64_LIST if name in int_features else _TAG_FLOAT_LIST)
        pieces.append(_constant_piece(bytes([list_tag]), num_records))
        pieces.append(length_piece(value_list))
        if name in bytes_features:
            pieces.append(payloads[name])
        elif arrays[name].shape[1] > 0:
            pieces.append(_constant_piece(bytes([_TAG_PACKED_VALUES]), num_records))
            pieces.append(length_piece(payload))
            pieces.append(payloads[name])
    return _concatenate_pieces(pieces)


# ----------------------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli) of many byte strings at once, and TFRecord framing.

_CRC32C_POLY = 0x82F63B78


@functools.lru_cache(maxsize=None)
def _crc_tables():
    """Tables for the reflected CRC-32C: the byte table, and 16-bit tables that advance the state 8 bytes at once."""
    byte_table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        byte_table = np.where(byte_table & 1, (byte_table >> 1) ^ np.uint32(_CRC32C_POLY), byte_table >> 1)

    def advance_zero_bytes(states, count):  # the state update is linear, so tables of its action suffice
        for _ in range(count):
            states = byte_table[states & 0xFF] ^ (states >> 8)
        return states

    low = np.arange(1 << 16, dtype=np.uint32)
    high = low << 16
    tables = (advance_zero_bytes(low, 8), advance_zero_bytes(high, 8),
              advance_zero_bytes(low, 4), advance_zero_bytes(high, 4))
    # A zero byte maps state c to table[c & 0xFF] ^ (c >> 8); the table's top bytes are all distinct, so it can be undone.
    index_of_top_byte = np.empty(256, dtype=np.int64)
    index_of_top_byte[byte_table >> 24] = np.arange(256)
    if len(set((byte_table >> 24).tolist())) != 256:
        raise AssertionError("CRC-32C table top bytes must be a permutation")
    return byte_table, tables, index_of_top_byte


_start_states_cache = [0xFFFFFFFF]


def _start_states(max_padding: int) -> np.ndarray:
    """start[k]: the state that k zero bytes carry to the CRC's initial 0xFFFFFFFF, so records can be left-padded."""
    byte_table, _, index_of_top_byte = _crc_tables()
    table = byte_table.tolist()
    while len(_start_states_cache) <= max_padding:
        state = _start_states_cache[-1]
        low_byte = int(index_of_top_byte[state >> 24])
        _start_states_cache.append((((state ^ table[low_byte]) << 8) & 0xFFFFFFFF) | low_byte)
    return np.array(_start_states_cache[:max_padding + 1], dtype=np.uint32)


def _crc32c_rows(matrix: np.ndarray, start_states: np.ndarray) -> np.ndarray:
    """CRC-32C state after feeding each row of a [rows, 8k] uint8 matrix from its start state."""
    _, (zero8_low, zero8_high, zero4_low, zero4_high), _ = _crc_tables()
    words = np.ascontiguousarray(matrix).view("<u4").T.copy()  # [columns, rows]: contiguous column access
    states = start_states.astype(np.uint32).copy()
    for column in range(0, words.shape[0], 2):
        states ^= words[column]
        following = words[column + 1]
        states = (zero8_low[states & 0xFFFF] ^ zero8_high[states >> 16]
                  ^ zero4_low[following & 0xFFFF] ^ zero4_high[following >> 16])
    return states


def crc32c_many(records: PackedRecords) -> np.ndarray:
    """CRC-32C (as used by TFRecord) of every record, as uint32."""
    lengths = records.lengths.astype(np.int64)
    result = np.empty(len(lengths), dtype=np.uint32)
    if len(lengths) == 0:
        return result
    data_ends = np.cumsum(lengths)
    rows_per_group = max(1, _CRC_MATRIX_BUDGET_BYTES // (int(lengths.max()) + 8))
    for begin in range(0, len(lengths), rows_per_group):
        end = min(begin + rows_per_group, len(lengths))
        group_lengths = lengths[begin:end]
        width = -(-max(int(group_lengths.max()), 1) // 8) * 8
        padding = width - group_lengths
        # Right-align every record behind zero bytes; its start state makes those zeros a no-op.
        matrix = np.zeros((end - begin, width), dtype=np.uint8)
        matrix[np.arange(width) >= padding[:, None]] = records.data[data_ends[begin] - lengths[begin]:data_ends[end - 1]]
        states = _crc32c_rows(matrix, _start_states(width)[padding])
        result[begin:end] = states ^ np.uint32(0xFFFFFFFF)
    return result


def _masked_crc(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint64)
    return ((((crc >> np.uint64(15)) | (crc << np.uint64(17))) + np.uint64(0xA282EAD8)) & np.uint64(0xFFFFFFFF)).astype("<u4")


def frame_records(records: PackedRecords | Sequence[bytes]) -> bytes:
    """TFRecord framing of many records: uint64 length, masked CRC of the length, data, masked CRC of the data."""
    if not isinstance(records, PackedRecords):
        records = PackedRecords.from_list(list(records))
    count = len(records)
    if count == 0:
        return b""
    lengths = records.lengths.astype("<u8")
    length_bytes = lengths.view(np.uint8).reshape(count, 8)
    length_crc = _masked_crc(_crc32c_rows(length_bytes, np.full(count, 0xFFFFFFFF, dtype=np.uint32)) ^ np.uint32(0xFFFFFFFF))
    data_crc = _masked_crc(crc32c_many(records))

    # Each frame is [8 length bytes | 4 length CRC bytes | data | 4 data CRC bytes]: fill the data by mask.
    data_lengths = records.lengths.astype(np.int64)
    frame_starts = np.cumsum(data_lengths + 16) - (data_lengths + 16)
    out = np.empty(int(data_lengths.sum()) + 16 * count, dtype=np.uint8)
    header_positions = (frame_starts[:, None] + np.arange(12)).ravel()
    footer_positions = (frame_starts[:, None] + 12 + data_lengths[:, None] + np.arange(4)).ravel()
    is_data = np.ones(len(out), dtype=bool)
    is_data[header_positions] = False
    is_data[footer_positions] = False
    out[is_data] = records.data
    out[header_positions] = np.hstack([length_bytes, length_crc.view(np.uint8).reshape(count, 4)]).ravel()
    out[footer_positions] = data_crc.view(np.uint8)
    return out.tobytes()


class TFRecordFileWriter:
    """Writes TFRecord frames to an open binary handle; single records are buffered and framed in batches."""

    def __init__(self, handle):
        self._handle = handle
        self._pending: list[bytes] = []
        self.records_written = 0

    def write(self, record: bytes) -> None:
        self._pending.append(bytes(record))
        if len(self._pending) >= _PENDING_RECORDS_PER_FLUSH:
            self.flush()

    def write_records(self, records: PackedRecords | Iterable[bytes]) -> None:
        self.flush()  # keeps file order equal to call order
        if not isinstance(records, PackedRecords):
            records = PackedRecords.from_list(list(records))
        self.write_framed(frame_records(records), len(records))

    def write_framed(self, framed: bytes, count: int) -> None:
        """Appends bytes already produced by `frame_records` (e.g. by a worker process) holding `count` records."""
        self.flush()
        self._handle.write(framed)
        self.records_written += count

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._handle.write(frame_records(pending))
            self.records_written += len(pending)


@contextlib.contextmanager
def atomic_tfrecord_writer(path: str | os.PathLike):
    """A `TFRecordFileWriter` on a temp file that becomes `path` only if the block succeeds (removed otherwise)."""
    with io_utils.atomic_output(path, "wb") as handle:
        writer = TFRecordFileWriter(handle)
        yield writer
        writer.flush()


# ----------------------------------------------------------------------------------------------------------
# Sharded writing.

_RECORDS_PER_SERIALIZE_CHUNK = 8192  # bounds the temporary byte matrices of the batched encoder


def sharded_paths(output_prefix: str | os.PathLike, num_shards: int) -> list[str]:
    """`{prefix}-00000-of-00008.tfrecord`, ... : the names `write_sharded` writes."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    return [f"{os.fspath(output_prefix)}-{index:05d}-of-{num_shards:05d}.tfrecord" for index in range(num_shards)]


def serialize_examples(features: Mapping[str, np.ndarray | Sequence]) -> PackedRecords:
    """`serialize_int_examples` with each feature's kind taken from its values.

    Float arrays become float features, integer/bool arrays int64 features, anything else (sequences of str/bytes,
    string or object arrays) bytes features.
    """
    int_features, float_features, bytes_features = {}, {}, {}
    for name, values in features.items():
        kind = values.dtype.kind if isinstance(values, np.ndarray) else "O"
        if kind == "f":
            float_features[name] = values
        elif kind in "iub":
            int_features[name] = values
        else:
            bytes_features[name] = values
    return serialize_int_examples(int_features, float_features, bytes_features)


def _num_records(features: Mapping) -> int:
    counts = {len(values) for values in features.values()}
    if len(counts) != 1:
        raise ValueError(f"features disagree on the number of records: {sorted(counts)}")
    return counts.pop()


def write_sharded(records_or_features: PackedRecords | Sequence[bytes] | Mapping[str, np.ndarray | Sequence],
                  output_prefix: str | os.PathLike, num_shards: int) -> list[str]:
    """Writes records (serialized, or features as for `serialize_examples`) into `num_shards` TFRecord files.

    Record i goes to shard i % num_shards (Google BERT's writer), so every shard samples the whole sequence.
    All files appear together or not at all. Returns the paths (`sharded_paths`).
    """
    paths = sharded_paths(output_prefix, num_shards)
    if isinstance(records_or_features, Mapping):
        features = records_or_features
        total = _num_records(features)
        chunks = (serialize_examples({name: values[begin:begin + _RECORDS_PER_SERIALIZE_CHUNK]
                                      for name, values in features.items()})
                  for begin in range(0, total, _RECORDS_PER_SERIALIZE_CHUNK))
    else:
        records = records_or_features
        if not isinstance(records, PackedRecords):
            records = PackedRecords.from_list(list(records))
        chunks = [records]
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(atomic_tfrecord_writer(path)) for path in paths]
        written = 0
        for chunk in chunks:
            shard_of_record = (written + np.arange(len(chunk))) % num_shards
            for shard, writer in enumerate(writers):
                selected = np.flatnonzero(shard_of_record == shard)
                if len(selected):
                    writer.write_framed(frame_records(select_records(chunk, selected)), len(selected))
            written += len(chunk)
    return paths


def select_records(records: PackedRecords, indices: np.ndarray) -> PackedRecords:
    """The records at `indices` (in that order) as a new `PackedRecords`."""
    indices = np.asarray(indices, dtype=np.int64)
    lengths = records.lengths.astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    picked_lengths = lengths[indices]
    if len(indices) == 0 or int(picked_lengths.sum()) == 0:
        return PackedRecords(np.zeros(0, dtype=np.uint8), picked_lengths)
    # Byte positions of the picked records, built as one ramp per record.
    offsets = np.repeat(starts[indices] - (np.cumsum(picked_lengths) - picked_lengths), picked_lengths)
    positions = np.arange(int(picked_lengths.sum()), dtype=np.int64) + offsets
    return PackedRecords(records.data[positions], picked_lengths)


# ----------------------------------------------------------------------------------------------------------
# Reading with tf.data.


def _tf():
    import tensorflow as tf  # imported here so that writers never pay for TensorFlow
    return tf


def fixed_int_feature_spec(lengths: Mapping[str, int]) -> dict:
    """{name: FixedLenFeature([length], int64)} for `parse_int_features` / `make_dataset`."""
    tf = _tf()
    return {name: tf.io.FixedLenFeature([int(length)], tf.int64) for name, length in lengths.items()}


def parse_int_features(serialized, feature_spec: Mapping) -> dict:
    """Parses one serialized Example (scalar) or a batch (vector); int64 features come back as int32."""
    tf = _tf()
    serialized = tf.convert_to_tensor(serialized)
    if serialized.shape.rank == 0:
        parsed = tf.io.parse_single_example(serialized, dict(feature_spec))
    else:
        parsed = tf.io.parse_example(serialized, dict(feature_spec))
    return {name: tf.cast(value, tf.int32) if value.dtype == tf.int64 else value for name, value in parsed.items()}


RECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tf_record")


def output_prefix_of(output_file: str) -> str:
    """`data/x.tfrecord` -> `data/x`: the prefix whose shards are `data/x-00000-of-00008.tfrecord`, ..."""
    for suffix in RECORD_SUFFIXES:
        if output_file.endswith(suffix):
            return output_file[: -len(suffix)]
    return output_file


def expand_file_patterns(file_patterns, shards: bool = False, error_class: type[Exception] = FileNotFoundError,
                         what: str = "TFRecord file") -> list[str]:
    """Comma-separated files or globs (the original scripts' `--input_file` style) -> existing paths, in order.

    With `shards`, a name that is absent but whose shards exist (`x.tfrecord` -> `x-00000-of-00008.tfrecord`, ...,
    the names `write_sharded` writes) stands for those shards.
    """
    if isinstance(file_patterns, (str, os.PathLike)):
        file_patterns = [file_patterns]
    files = []
    for pattern in file_patterns:
        for part in str(pattern).split(","):
            part = part.strip()
            if not part:
                continue
            matches = io_utils.glob(part) if io_utils.has_magic(part) else [part] if io_utils.exists(part) else []
            if not matches and shards and not io_utils.has_magic(part):
                matches = io_utils.glob(io_utils.glob_escape(output_prefix_of(part)) + "-[0-9]*-of-[0-9]*.tfrecord")
            if not matches:
                shard_hint = " (nor its shards <name>-00000-of-0000N.tfrecord)" if shards else ""
                raise error_class(f"{what}: nothing matches {part!r}{shard_hint}")
            files.extend(matches)
    if not files:
        raise error_class(f"{what}: no file given ({file_patterns!r})")
    return list(dict.fromkeys(io_utils.normpath(path) for path in files))



def make_dataset(file_patterns, feature_spec: Mapping, batch_size: int, is_training: bool, seed: int | None = None,
                 shuffle_buffer: int = 10000, input_context=None, drop_remainder: bool | None = None,
                 repeat: bool | None = None, cycle_length: int | None = 4):
    """Batched, parsed tf.data pipeline over TFRecord files.

    Training follows Google BERT's `input_fn_builder`: the file list is shuffled (seeded, anew every epoch) and
    `cycle_length` files are read interleaved record by record (deterministic for a seed) before the record shuffle
    (`shuffle_buffer`, `seed`), so the buffer mixes several files instead of one file after another; epochs repeat
    forever, each a new order of every record. Evaluation reads the files one after another in order. Sharded by
    `input_context`: whole files when there are enough of them, otherwise every file's records are dealt round-robin
    to the pipelines. int64 features are cast to int32.
    """
    tf = _tf()
    files = expand_file_patterns(file_patterns)
    drop_remainder = is_training if drop_remainder is None else drop_remainder
    repeat = is_training if repeat is None else repeat
    num_pipelines = input_context.num_input_pipelines if input_context is not None else 1
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    shard_files = num_pipelines > 1 and len(files) >= num_pipelines
    if shard_files:
        files = files[pipeline_id::num_pipelines]  # whole files per pipeline: no wasted reads

    def read_file(path):
        records = tf.data.TFRecordDataset(path)
        if num_pipelines > 1 and not shard_files:
            records = records.shard(num_pipelines, pipeline_id)
        return records

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if is_training:
        file_seed = None if seed is None else seed + 1  # not the record shuffle's seed: independent orders
        dataset = dataset.shuffle(len(files), seed=file_seed, reshuffle_each_iteration=True)
        cycle = max(1, min(int(cycle_length or 1), len(files)))
        parallel = {"num_parallel_calls": cycle, "deterministic": True} if cycle > 1 else {}
        dataset = dataset.interleave(read_file, cycle_length=cycle, block_length=1, **parallel)
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        dataset = dataset.flat_map(read_file)
    if repeat:
        dataset = dataset.repeat()  # after the shuffles: each epoch holds every record once, in a new order
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    # Parsing whole batches is much faster than parsing one Example at a time.
    dataset = dataset.map(lambda serialized: parse_int_features(serialized, feature_spec),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
