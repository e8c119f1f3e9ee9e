"""BERT pre-training instances (masked LM + next sentence) with Google BERT's `create_pretraining_data.py` semantics.

Per document and dupe pass, exactly as Google's script: a target length (`max_seq_length - 3`, or with
`short_seq_prob` a random one from 2), chunks of whole sentences up to it, segment A = a random number of the chunk's
sentences, segment B = the rest of the chunk or (50%, and always for a one-sentence chunk) a span of another
document starting at a random sentence, the chunk's unused sentences then put back; the longer segment is trimmed one
token at a time from a random end until the pair fits; `[CLS] A [SEP] B [SEP]`. Masking: `num_to_predict =
min(max_predictions_per_seq, max(1, round(len(tokens) * masked_lm_prob)))` (Python's rounding, half to even) of the
non-`[CLS]`/`[SEP]` tokens (whole words over `##` pieces with `do_whole_word_mask`), each 80% `[MASK]`, 10% a
random vocabulary token, 10% unchanged. `next_sentence=False` gives one-segment MLM instances `[CLS] chunk [SEP]`
(token streams that are not text, such as TV programme ids).

Speed and scale: sentences are tokenized once and kept as one flat id array per block of documents; the per-chunk
choices are a few scalar draws, and assembly, truncation and masking of all instances of a block are vectorised
with NumPy. Blocks are independent (see `_block_rng`), so workers process them in parallel and the output is the same
for any number of workers; the input is streamed block by block, and every output shard (an even share of every
block) is finally shuffled as a whole.
"""

from __future__ import annotations

import bisect
import collections
import collections.abc
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import pickle
import random
import struct
import sys
import tempfile
import threading
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from common import io_utils, tfrecords
from common.tokenization import CLS_TOKEN, CONTINUATION_PREFIX, MASK_TOKEN, SEP_TOKEN, UNK_TOKEN, load_vocab

DEFAULT_DOCUMENTS_PER_BLOCK = 256  # blocks are the unit of parallel work and of random-next draws
_BLOCKS_IN_FLIGHT_PER_WORKER = 2  # bounds memory: the reader never runs further ahead of the workers


@dataclasses.dataclass
class TrainingInstance:
    """One pre-training example before id conversion (Google's `TrainingInstance`)."""

    tokens: list[str]
    segment_ids: list[int]
    is_random_next: bool
    masked_lm_positions: list[int]
    masked_lm_labels: list[str]


@dataclasses.dataclass(frozen=True)
class InstanceSettings:
    """`create_training_instances`'s settings, checked (one ValueError listing every bad value)."""

    max_seq_length: int = 128
    dupe_factor: int = 10
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    random_seed: int = 12345
    next_sentence: bool = True
    do_whole_word_mask: bool = False
    documents_per_block: int = DEFAULT_DOCUMENTS_PER_BLOCK

    def __post_init__(self):
        special = 3 if self.next_sentence else 2
        problems = []
        if self.max_seq_length < special + 2:
            problems.append(f"max_seq_length={self.max_seq_length} leaves fewer than 2 tokens beside the "
                            f"{special} [CLS]/[SEP]")
        if self.dupe_factor < 1:
            problems.append(f"dupe_factor must be at least 1, got {self.dupe_factor}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            problems.append(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0.0 <= self.masked_lm_prob <= 1.0:
            problems.append(f"masked_lm_prob must be in [0, 1], got {self.masked_lm_prob}")
        if self.max_predictions_per_seq < 1:
            problems.append(f"max_predictions_per_seq must be at least 1, got {self.max_predictions_per_seq}")
        if self.random_seed < 0:
            problems.append(f"random_seed must be non-negative, got {self.random_seed}")
        if self.documents_per_block < 2:
            problems.append(f"documents_per_block must be at least 2, got {self.documents_per_block}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def max_num_tokens(self) -> int:
        return self.max_seq_length - (3 if self.next_sentence else 2)


class _IdsOrUnknown(dict):
    """token -> id with a default id for unknown tokens, at the speed of a plain dict lookup."""

    def __init__(self, ids: Mapping[str, int], unknown_id: int):
        super().__init__(ids)
        self.unknown_id = unknown_id

    def __missing__(self, token: str) -> int:
        return self.unknown_id


class _Vocabulary:
    """Token strings <-> ids, the special ids, and which ids are `##` continuation pieces."""

    def __init__(self, vocab_words: Sequence[str]):
        self.words = list(vocab_words)
        self.ids = {word: index for index, word in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            duplicates = [word for word, count in collections.Counter(self.words).items() if count > 1]
            raise ValueError(f"vocabulary has duplicate tokens: {duplicates[:5]}")
        missing = [token for token in (UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN) if token not in self.ids]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {missing}")
        self.unk_id, self.cls_id = self.ids[UNK_TOKEN], self.ids[CLS_TOKEN]
        self.sep_id, self.mask_id = self.ids[SEP_TOKEN], self.ids[MASK_TOKEN]
        self.lookup = _IdsOrUnknown(self.ids, self.unk_id).__getitem__  # token -> id, [UNK]'s for others
        self.is_continuation = np.array([word.startswith(CONTINUATION_PREFIX) for word in self.words], dtype=bool)


class _Block:
    """A block's non-empty documents as one flat id array; sentence k is ids[offsets[k]:offsets[k + 1]]."""

    def __init__(self, ids: np.ndarray, offsets: list[int], document_sentences: list[tuple[int, int]]):
        self.ids = ids
        self.offsets = offsets
        self.document_sentences = document_sentences  # [first sentence, last sentence + 1) per document


def _tokenize_block(documents: Sequence[Sequence[str]], vocab: _Vocabulary,
                    tokenize: Callable[[str], list[str]] | None) -> _Block:
    ids: list[int] = []
    offsets = [0]
    document_sentences = []
    lookup = vocab.lookup
    for document in documents:
        first = len(offsets) - 1
        for sentence in document:
            tokens = tokenize(sentence) if tokenize is not None else sentence.split()
            if tokens:  # Google drops sentences without tokens, then documents without sentences
                ids.extend(map(lookup, tokens))
                offsets.append(len(ids))
        if len(offsets) - 1 > first:
            document_sentences.append((first, len(offsets) - 1))
    return _Block(np.array(ids, dtype=np.int32), offsets, document_sentences)


_SEGMENTING, _MASKING, _SHARDING = 0, 1, 2  # what a block's random numbers are for


def _block_rng(settings: InstanceSettings, block_index: int, purpose: int,
               pass_index: int = 0) -> np.random.SeedSequence:
    # Deviation from Google, to stream and to parallelise: every block of `documents_per_block` documents has its own
    # RNGs derived from (seed, block, dupe pass), random-next segments come from another document of the same block,
    # and instances are shuffled within their block, then within their output shard (Google shuffles globally).
    return np.random.SeedSequence([settings.random_seed, block_index, purpose, pass_index])


def _segment_pass(block: _Block, settings: InstanceSettings,
                  rng: random.Random) -> list[tuple[int, int, int, int, bool]]:
    """One dupe pass over a block: per instance (a_start, a_end, b_start, b_end, is_random_next), untrimmed."""
    offsets = block.offsets
    documents = block.document_sentences
    num_documents = len(documents)
    max_num_tokens = settings.max_num_tokens
    short_seq_prob = settings.short_seq_prob
    pairs = settings.next_sentence
    if pairs and num_documents < 2:
        raise ValueError("next-sentence instances need at least 2 non-empty documents in a block "
                         f"(got {num_documents}); give more documents or use next_sentence=False")
    uniform = rng.random

    def randint(low: int, high: int) -> int:  # uniform on [low, high]; random.randint is several times slower
        return low + int(uniform() * (high - low + 1))

    spans = []
    for document_index, (first, end) in enumerate(documents):
        target = max_num_tokens
        if uniform() < short_seq_prob:
            target = randint(2, max_num_tokens)
        chunk_first = first
        while chunk_first < end:
            # The chunk: whole sentences until `target` tokens are reached or the document ends.
            last = bisect.bisect_left(offsets, offsets[chunk_first] + target, chunk_first + 1, end + 1) - 1
            last = min(last, end - 1)
            chunk_sentences = last - chunk_first + 1
            if not pairs:
                spans.append((offsets[chunk_first], offsets[last + 1], 0, 0, False))
                chunk_first = last + 1
                continue
            a_sentences = randint(1, chunk_sentences - 1) if chunk_sentences >= 2 else 1
            a_start, a_end = offsets[chunk_first], offsets[chunk_first + a_sentences]
            if chunk_sentences == 1 or uniform() < 0.5:
                other = randint(0, num_documents - 2)  # uniform over the other documents: never this one
                other += other >= document_index
                other_first, other_end = documents[other]
                start_sentence = randint(other_first, other_end - 1)
                b_start = offsets[start_sentence]
                # Whole sentences from there until B reaches target - len(A) tokens (at least one sentence).
                b_last = bisect.bisect_left(offsets, b_start + target - (a_end - a_start), start_sentence + 1,
                                            other_end + 1) - 1
                b_last = max(start_sentence, min(b_last, other_end - 1))
                spans.append((a_start, a_end, b_start, offsets[b_last + 1], True))
                chunk_first += a_sentences  # the unused sentences are put back
            else:
                spans.append((a_start, a_end, a_end, offsets[last + 1], False))
                chunk_first = last + 1
    return spans


def _trim_counts(length_a: np.ndarray, length_b: np.ndarray, max_num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens Google's `truncate_seq_pair` removes from A and from B (it trims the longer one, B on ties)."""
    excess = np.maximum(length_a + length_b - max_num_tokens, 0)
    first_a = np.where(length_a > length_b, np.minimum(excess, length_a - length_b), 0)
    first_b = np.where(length_a > length_b, 0, np.minimum(excess, length_b - length_a))
    rest = excess - first_a - first_b  # from equal lengths on, B and A alternate, B first
    return first_a + rest // 2, first_b + (rest + 1) // 2


@dataclasses.dataclass
class _InstanceArrays:
    """A block's instances as fixed-size arrays (the written features, before padding of the masked lists)."""

    input_ids: np.ndarray  # [n, max_seq_length] int32, masked tokens already replaced
    lengths: np.ndarray  # [n] tokens including [CLS]/[SEP]
    segment_ids: np.ndarray  # [n, max_seq_length] int8
    is_random_next: np.ndarray  # [n] bool
    masked_lm_positions: np.ndarray  # [n, max_predictions_per_seq] int32, 0-padded
    masked_lm_ids: np.ndarray  # [n, max_predictions_per_seq] int32 (original ids), 0-padded
    masked_lm_counts: np.ndarray  # [n]

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, order: np.ndarray) -> "_InstanceArrays":
        return _InstanceArrays(*(getattr(self, field.name)[order] for field in dataclasses.fields(self)))


def _assemble(block: _Block, spans: np.ndarray, settings: InstanceSettings, np_rng: np.random.Generator,
              vocab: _Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trims the spans and lays out `[CLS] A [SEP] B [SEP]` (or `[CLS] A [SEP]`): ids, lengths, segment ids."""
    a_start, a_end, b_start, b_end = (spans[:, column].astype(np.int64) for column in range(4))
    length_a, length_b = a_end - a_start, b_end - b_start
    trim_a, trim_b = _trim_counts(length_a, length_b, settings.max_num_tokens)
    # Each trimmed token leaves from the front or the back with probability 1/2: binomially many from the front.
    front_a = np_rng.binomial(trim_a, 0.5)
    front_b = np_rng.binomial(trim_b, 0.5)
    a_start, a_end = a_start + front_a, a_end - (trim_a - front_a)
    b_start, b_end = b_start + front_b, b_end - (trim_b - front_b)
    length_a, length_b = a_end - a_start, b_end - b_start

    pairs = settings.next_sentence
    lengths = length_a + 2 + (length_b + 1 if pairs else 0)
    rows = np.arange(len(lengths))
    column = np.arange(settings.max_seq_length, dtype=np.int32)[None, :]
    la, end = length_a.astype(np.int32)[:, None], lengths.astype(np.int32)[:, None]
    # Token k of A sits at column k + 1, token k of B at column len(A) + 2 + k; other columns read a 0 after the ids.
    in_b = column > la
    source = column + np.where(in_b, (b_start - length_a - 2).astype(np.int32)[:, None],
                               (a_start - 1).astype(np.int32)[:, None])
    source[(column == 0) | (column == la + 1) | (column >= end - (1 if pairs else 0))] = len(block.ids)
    ids = np.append(block.ids, np.int32(0))[source]
    ids[:, 0] = vocab.cls_id
    ids[rows, length_a + 1] = vocab.sep_id
    if pairs:
        ids[rows, lengths - 1] = vocab.sep_id
    segment_ids = ((column > la + 1) & (column < end)).astype(np.int8)
    return ids, lengths, segment_ids


def _smallest_keys(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Boolean mask of the `counts[i]` smallest keys of every row i, keys of 2.0 (not candidates) excluded."""
    rows, width = keys.shape
    most = int(min(max(int(counts.max()), 1), width))
    if most < width:
        smallest = np.argpartition(keys, most - 1, axis=1)[:, :most]
    else:
        smallest = np.tile(np.arange(width), (rows, 1))
    smallest_keys = np.take_along_axis(keys, smallest, axis=1)
    rank = np.empty_like(smallest)
    np.put_along_axis(rank, np.argsort(smallest_keys, axis=1), np.arange(most)[None, :].repeat(rows, axis=0), axis=1)
    chosen = (rank < counts[:, None]) & (smallest_keys < 2.0)
    selected = np.zeros((rows, width), dtype=bool)
    np.put_along_axis(selected, smallest, chosen, axis=1)
    return selected


def _mask(ids: np.ndarray, lengths: np.ndarray, settings: InstanceSettings, np_rng: np.random.Generator,
          vocab: _Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Google's masking, vectorised over instances. Replaces `ids` in place; returns positions, labels, counts."""
    rows, width = ids.shape
    max_predictions = settings.max_predictions_per_seq
    column = np.arange(width)[None, :]
    candidate = (column < lengths[:, None]) & (ids != vocab.cls_id) & (ids != vocab.sep_id)
    num_to_predict = np.minimum(max_predictions,
                                np.maximum(1, np.rint(lengths * settings.masked_lm_prob).astype(np.int64)))

    if not settings.do_whole_word_mask:
        # Google shuffles the candidates and takes the first num_to_predict: the positions of the smallest random keys.
        keys = np.where(candidate, np_rng.random((rows, width)), 2.0)
        selected = _smallest_keys(keys, num_to_predict)
    else:
        # Candidate groups: a word and its following `##` pieces (a group never crosses [CLS]/[SEP], where Google's
        # would join a `##` piece opening segment B to A's last word).
        previous_candidate = np.zeros_like(candidate)
        previous_candidate[:, 1:] = candidate[:, :-1]
        starts = candidate & ~(vocab.is_continuation[ids] & previous_candidate)
        group_of = np.cumsum(starts, axis=1) - 1  # group index of every candidate position
        num_groups = starts.sum(axis=1)
        max_groups = int(num_groups.max()) if rows else 0
        # A random order of every row's groups (Google shuffles the candidate list), then greedy selection in it.
        keys = np_rng.random((rows, max_groups))
        keys[np.arange(max_groups)[None, :] >= num_groups[:, None]] = 2.0  # absent groups sort last
        order = np.argsort(keys, axis=1, kind="stable")
        group_length = np.zeros((rows, max_groups + 1), dtype=np.int64)
        np.add.at(group_length, (np.nonzero(candidate)[0], group_of[candidate]), 1)
        ranked_length = np.take_along_axis(group_length[:, :max_groups], order, axis=1)
        chosen_ranked = np.zeros((rows, max_groups), dtype=bool)
        count = np.zeros(rows, dtype=np.int64)
        for rank in range(max_groups):  # a word that would overshoot num_to_predict is skipped, as Google does
            length = ranked_length[:, rank]
            take = (length > 0) & (count + length <= num_to_predict)
            chosen_ranked[:, rank] = take
            count += np.where(take, length, 0)
            if np.all(count >= num_to_predict):
                break
        chosen_group = np.zeros((rows, max_groups + 1), dtype=bool)
        np.put_along_axis(chosen_group, order, chosen_ranked, axis=1)
        selected = candidate & np.take_along_axis(chosen_group, np.where(candidate, group_of, max_groups), axis=1)

    counts = selected.sum(axis=1)
    # Positions in increasing order (Google sorts the predictions by position), padded with 0.
    selected_rows, selected_columns = np.nonzero(selected)  # row-major: columns ascend within a row
    slots = np.arange(len(selected_rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    positions = np.zeros((rows, max_predictions), dtype=np.int32)
    positions[selected_rows, slots] = selected_columns
    valid = np.arange(max_predictions)[None, :] < counts[:, None]
    labels = np.where(valid, np.take_along_axis(ids, positions, axis=1), 0).astype(np.int32)

    # 80% [MASK], else half the time unchanged and half the time a random vocabulary token.
    draw = np_rng.random((rows, max_predictions))
    keep = np_rng.random((rows, max_predictions)) < 0.5
    random_ids = np_rng.integers(0, len(vocab.words), size=(rows, max_predictions))
    replacement = np.where(draw < 0.8, vocab.mask_id, np.where(keep, labels, random_ids))
    row_index = np.broadcast_to(np.arange(rows)[:, None], positions.shape)
    ids[row_index[valid], positions[valid]] = replacement[valid]
    return positions, labels, counts


def _block_instances(documents: Sequence[Sequence[str]], block_index: int, settings: InstanceSettings,
                     vocab: _Vocabulary, tokenize) -> tuple[_InstanceArrays, int]:
    """All dupe passes of one block, shuffled within the block; and the number of non-empty documents."""
    block = _tokenize_block(documents, vocab, tokenize)
    if not block.document_sentences:
        empty = np.zeros((0, settings.max_seq_length), dtype=np.int32)
        empty_predictions = np.zeros((0, settings.max_predictions_per_seq), dtype=np.int32)
        return _InstanceArrays(empty, np.zeros(0, np.int64), empty.astype(np.int8), np.zeros(0, bool),
                               empty_predictions, empty_predictions.copy(), np.zeros(0, np.int64)), 0
    spans = []
    for pass_index in range(settings.dupe_factor):
        seed = _block_rng(settings, block_index, _SEGMENTING, pass_index).generate_state(4)
        spans.extend(_segment_pass(block, settings, random.Random(int.from_bytes(seed.tobytes(), "little"))))
    span_array = np.array([span[:4] for span in spans], dtype=np.int64).reshape(-1, 4)
    is_random_next = np.array([span[4] for span in spans], dtype=bool)
    np_rng = np.random.default_rng(_block_rng(settings, block_index, _MASKING))
    ids, lengths, segment_ids = _assemble(block, span_array, settings, np_rng, vocab)
    positions, labels, counts = _mask(ids, lengths, settings, np_rng, vocab)
    instances = _InstanceArrays(ids, lengths, segment_ids, is_random_next, positions, labels, counts)
    return instances.take(np_rng.permutation(len(instances))), len(block.document_sentences)


# ---- streaming documents in blocks -----------------------------------------------------------------------------

def _iter_documents(documents) -> Iterable[Sequence[str]]:
    if callable(documents):
        documents = documents()
    if isinstance(documents, (str, bytes)):
        raise TypeError("documents must be an iterable of documents (each a sequence of sentence strings)")
    return documents


def _check_document(document, index: int) -> list[str]:
    if isinstance(document, str):
        raise TypeError(f"document {index} is a string; a document is a sequence of sentence strings")
    sentences = list(document)
    for sentence in sentences:
        if not isinstance(sentence, str):
            raise TypeError(f"document {index} holds a {type(sentence).__name__}; sentences must be strings")
    return sentences


def _iter_blocks(documents, documents_per_block: int) -> Iterator[list[list[str]]]:
    """Consecutive blocks of documents; a last block under half the size is merged into the one before it."""
    iterator = (_check_document(document, index) for index, document in enumerate(_iter_documents(documents)))
    pending = None
    while True:
        block = list(itertools.islice(iterator, documents_per_block))
        if pending is not None and len(block) < max(2, documents_per_block // 2):
            yield pending + block  # a tiny tail would leave random-next segments few documents to come from
            return
        if pending is not None:
            yield pending
        if not block:
            return
        pending = block


# ---- the public API ------------------------------------------------------------------------------------------

def _settings(max_seq_length=128, dupe_factor=10, short_seq_prob=0.1, masked_lm_prob=0.15, max_predictions_per_seq=20,
              random_seed=12345, next_sentence=True, do_whole_word_mask=False,
              documents_per_block=DEFAULT_DOCUMENTS_PER_BLOCK) -> InstanceSettings:
    return InstanceSettings(int(max_seq_length), int(dupe_factor), float(short_seq_prob), float(masked_lm_prob),
                            int(max_predictions_per_seq), int(random_seed), bool(next_sentence),
                            bool(do_whole_word_mask), int(documents_per_block))


def create_training_instances(documents: Iterable[Sequence[str]], vocab_words: Sequence[str],
                              tokenize: Callable[[str], list[str]] | None = None, max_seq_length=128, dupe_factor=10,
                              short_seq_prob=0.1, masked_lm_prob=0.15, max_predictions_per_seq=20, random_seed=12345,
                              next_sentence=True, do_whole_word_mask=False,
                              documents_per_block=DEFAULT_DOCUMENTS_PER_BLOCK) -> list[TrainingInstance]:
    """Documents (each a sequence of sentence strings) -> pre-training instances, Google BERT's algorithm.

    `tokenize=None` splits sentences on whitespace and maps each token to the vocabulary directly (unknown ones to
    [UNK]), e.g. TV programme ids. `next_sentence=False` gives MLM-only instances `[CLS] tokens [SEP]` (segment 0).
    `vocab_words[i]` is the token of id i. The instances are those `write_pretraining_data` writes, in another order.
    """
    settings = _settings(max_seq_length, dupe_factor, short_seq_prob, masked_lm_prob, max_predictions_per_seq,
                         random_seed, next_sentence, do_whole_word_mask, documents_per_block)
    vocab = _Vocabulary(vocab_words)
    instances = []
    for block_index, block_documents in enumerate(_iter_blocks(documents, settings.documents_per_block)):
        arrays, _ = _block_instances(block_documents, block_index, settings, vocab, tokenize)
        instances.extend(_to_training_instances(arrays, vocab))
    # All instances in one random order, as Google's script leaves them.
    rng = np.random.default_rng(np.random.SeedSequence([settings.random_seed], spawn_key=(2,)))
    order = rng.permutation(len(instances))
    return [instances[index] for index in order.tolist()]


def _to_training_instances(arrays: _InstanceArrays, vocab: _Vocabulary) -> list[TrainingInstance]:
    words = vocab.words
    instances = []
    for row in range(len(arrays)):
        length, count = int(arrays.lengths[row]), int(arrays.masked_lm_counts[row])
        instances.append(TrainingInstance(
            tokens=[words[token_id] for token_id in arrays.input_ids[row, :length].tolist()],
            segment_ids=arrays.segment_ids[row, :length].tolist(),
            is_random_next=bool(arrays.is_random_next[row]),
            masked_lm_positions=arrays.masked_lm_positions[row, :count].tolist(),
            masked_lm_labels=[words[token_id] for token_id in arrays.masked_lm_ids[row, :count].tolist()]))
    return instances


def instances_to_features(instances: Sequence[TrainingInstance], vocab: Mapping[str, int], max_seq_length: int,
                          max_predictions_per_seq: int) -> dict[str, np.ndarray]:
    """Instances -> the written features (Google's `write_instance_to_example_files`), zero-padded numpy arrays."""
    count = len(instances)
    features = {name: np.zeros((count, max_seq_length), dtype=np.int64)
                for name in ("input_ids", "input_mask", "segment_ids")}
    features.update({name: np.zeros((count, max_predictions_per_seq), dtype=np.int64)
                     for name in ("masked_lm_positions", "masked_lm_ids")})
    features["masked_lm_weights"] = np.zeros((count, max_predictions_per_seq), dtype=np.float32)
    features["next_sentence_labels"] = np.zeros((count, 1), dtype=np.int64)
    unk_id = vocab[UNK_TOKEN]
    for row, instance in enumerate(instances):
        length, predictions = len(instance.tokens), len(instance.masked_lm_positions)
        if length > max_seq_length or predictions > max_predictions_per_seq:
            raise ValueError(f"instance {row} has {length} tokens and {predictions} predictions, over "
                             f"max_seq_length={max_seq_length} / max_predictions_per_seq={max_predictions_per_seq}")
        features["input_ids"][row, :length] = [vocab.get(token, unk_id) for token in instance.tokens]
        features["input_mask"][row, :length] = 1
        features["segment_ids"][row, :length] = instance.segment_ids
        features["masked_lm_positions"][row, :predictions] = instance.masked_lm_positions
        features["masked_lm_ids"][row, :predictions] = [vocab.get(token, unk_id) for token in instance.masked_lm_labels]
        features["masked_lm_weights"][row, :predictions] = 1.0
        features["next_sentence_labels"][row, 0] = int(instance.is_random_next)
    return features


def _arrays_to_features(arrays: _InstanceArrays, max_seq_length: int) -> dict[str, np.ndarray]:
    column = np.arange(max_seq_length)[None, :]
    weights = (np.arange(arrays.masked_lm_positions.shape[1])[None, :] < arrays.masked_lm_counts[:, None])
    return {"input_ids": arrays.input_ids,
            "input_mask": (column < arrays.lengths[:, None]).astype(np.int8),
            "segment_ids": arrays.segment_ids,
            "masked_lm_positions": arrays.masked_lm_positions,
            "masked_lm_ids": arrays.masked_lm_ids,
            "masked_lm_weights": weights.astype(np.float32),
            "next_sentence_labels": arrays.is_random_next.astype(np.int8)[:, None]}


def pretraining_feature_spec(max_seq_length: int, max_predictions_per_seq: int, next_sentence: bool = True) -> dict:
    """The `tf.io.FixedLenFeature` spec of the written features (`next_sentence_labels` only with next_sentence)."""
    import tensorflow as tf

    spec = {"input_ids": tf.io.FixedLenFeature([max_seq_length], tf.int64),
            "input_mask": tf.io.FixedLenFeature([max_seq_length], tf.int64),
            "segment_ids": tf.io.FixedLenFeature([max_seq_length], tf.int64),
            "masked_lm_positions": tf.io.FixedLenFeature([max_predictions_per_seq], tf.int64),
            "masked_lm_ids": tf.io.FixedLenFeature([max_predictions_per_seq], tf.int64),
            "masked_lm_weights": tf.io.FixedLenFeature([max_predictions_per_seq], tf.float32)}
    if next_sentence:
        spec["next_sentence_labels"] = tf.io.FixedLenFeature([1], tf.int64)
    return spec


def make_pretraining_dataset(file_patterns, batch_size: int, max_seq_length: int, max_predictions_per_seq: int,
                             is_training: bool, seed: int | None = None, next_sentence: bool = True,
                             input_context=None, cycle_length: int = 4, shuffle_buffer: int = 100):
    """Batched pre-training features from the written TFRecords (Google's `input_fn_builder`: for training the
    files are shuffled and `cycle_length` of them interleaved, then records shuffled in a `shuffle_buffer`)."""
    spec = pretraining_feature_spec(max_seq_length, max_predictions_per_seq, next_sentence)
    return tfrecords.make_dataset(file_patterns, spec, batch_size, is_training, seed=seed,
                                  shuffle_buffer=shuffle_buffer, input_context=input_context,
                                  cycle_length=cycle_length)


# ---- writing, in parallel --------------------------------------------------------------------------------------

_worker_state: dict = {}


def _init_worker(vocab_words, tokenize, settings: InstanceSettings, num_shards: int) -> None:
    _worker_state.update(vocab=_Vocabulary(vocab_words), tokenize=tokenize, settings=settings, num_shards=num_shards)


def _write_block_task(task) -> dict:
    """A block -> its instances serialized and framed per shard, and its statistics (runs in a worker)."""
    block_index, documents = task
    settings, vocab, num_shards = _worker_state["settings"], _worker_state["vocab"], _worker_state["num_shards"]
    arrays, num_documents = _block_instances(documents, block_index, settings, vocab, _worker_state["tokenize"])
    framed = []
    if len(arrays):
        # Shards take the block's (shuffled) instances in turn from a seeded start: balanced and worker-independent.
        shard_rng = np.random.default_rng(_block_rng(settings, block_index, _SHARDING))
        start = int(shard_rng.integers(num_shards))
        shard_of = (start + np.arange(len(arrays))) % num_shards
        by_shard = np.argsort(shard_of, kind="stable")  # each shard's records contiguous, in block order
        records = tfrecords.serialize_examples(_arrays_to_features(arrays.take(by_shard), settings.max_seq_length))
        record_ends = np.cumsum(records.lengths)
        first = 0
        for shard, count in enumerate(np.bincount(shard_of, minlength=num_shards).tolist()):
            if count:
                begin_byte = int(record_ends[first - 1]) if first else 0
                shard_records = tfrecords.PackedRecords(records.data[begin_byte:int(record_ends[first + count - 1])],
                                                        records.lengths[first:first + count])
                framed.append((shard, tfrecords.frame_records(shard_records), count))
                first += count
    valid = np.arange(arrays.masked_lm_ids.shape[1])[None, :] < arrays.masked_lm_counts[:, None]
    return {"framed": framed, "documents": num_documents, "instances": len(arrays),
            "masked_tokens": int(arrays.masked_lm_counts.sum()),
            "masked_unk": int(((arrays.masked_lm_ids == vocab.unk_id) & valid).sum()),
            "random_next": int(arrays.is_random_next.sum()), "tokens": int(arrays.lengths.sum())}


# common.cli's stderr filter thread only calls os.read/os.write (no locks a forked child could inherit held).
_FORK_SAFE_THREADS = ("bertsuite-stderr-filter",)


def _fork_is_safe() -> bool:
    """Forking copies only the calling thread: only do it with TensorFlow unloaded and no other threads running."""
    others = [thread for thread in threading.enumerate()
              if thread is not threading.main_thread() and thread.name not in _FORK_SAFE_THREADS]
    return sys.platform.startswith("linux") and "tensorflow" not in sys.modules and not others


@contextlib.contextmanager
def _worker_pool(num_workers: int, init_args):
    """A process pool whose workers hold the vocabulary and settings, or None to work in this process."""
    if num_workers <= 1:
        _init_worker(*init_args)
        try:
            yield None
        finally:
            _worker_state.clear()
        return
    context = multiprocessing.get_context("fork" if _fork_is_safe() else "spawn")
    pool = context.Pool(num_workers, initializer=_init_worker, initargs=init_args)
    try:
        yield pool
        pool.close()  # workers finish and exit normally
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _run_ordered(pool, tasks: Iterable, num_workers: int) -> Iterator[dict]:
    """`_write_block_task` of every task, in task order, with at most a few blocks read ahead."""
    if pool is None:
        for task in tasks:
            yield _write_block_task(task)
        return
    pending = collections.deque()
    for task in tasks:
        pending.append(pool.apply_async(_write_block_task, (task,)))
        if len(pending) >= _BLOCKS_IN_FLIGHT_PER_WORKER * num_workers:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _progress_bar(enabled: bool, total: int | None = None, unit: str = "doc", desc: str = "pre-training data"):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, mininterval=1.0)


def _frame_bounds(framed: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of every TFRecord frame (8-byte length, 4-byte CRC, data, 4-byte CRC) in a file's bytes."""
    starts, ends = [], []
    position, size = 0, len(framed)
    while position < size:
        if position + 12 > size:
            raise ValueError("truncated TFRecord frame")
        (length,) = struct.unpack_from("<Q", framed, position)
        starts.append(position)
        position += 16 + length
        ends.append(position)
    if position != size:
        raise ValueError("truncated TFRecord frame")
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


def _shuffled_frames(framed: bytes, rng: np.random.Generator) -> tuple[bytes, int]:
    """The file's frames in a random order (frames are self-contained: moving them needs no re-framing)."""
    starts, ends = _frame_bounds(framed)
    view = memoryview(framed)
    order = rng.permutation(len(starts))
    return b"".join(view[start:end] for start, end in zip(starts[order].tolist(), ends[order].tolist())), len(starts)


def write_pretraining_data(documents, output_prefix: str, vocab_file: str, *, tokenize=None, num_shards: int = 1,
                           num_workers: int | None = None, progress: bool = True, shuffle: bool = True,
                           **instance_kwargs) -> dict:
    """Writes pre-training instances of `documents` to `{output_prefix}-{i:05d}-of-{n:05d}.tfrecord`, i < num_shards.

    `documents`: an iterable of documents (each a sequence of sentence strings), or a callable returning one; it is
    read block by block (`documents_per_block`), so a corpus larger than memory works. Blocks are processed by
    `num_workers` processes (default: all cores); the files are the same for any number of workers and appear only
    when complete. Every block's instances are dealt evenly to the shards; with `shuffle` each shard is then
    permuted as a whole (in memory, one shard at a time: choose `num_shards` so that one fits), so that training
    does not meet the corpus in its file order (Google shuffles all instances). `tokenize` must be picklable (a
    module-level function or a tokenizer's bound method) when workers are used. `instance_kwargs` are
    `create_training_instances`'s. Returns the statistics: documents, instances, masked_tokens, masked_unk_share
    (share of masked tokens that are [UNK]), random_next_share, mean_tokens (per instance, [CLS]/[SEP] included),
    files.
    """
    settings = _settings(**instance_kwargs)
    vocab_words = [token for token, _ in sorted(load_vocab(vocab_file).items(), key=lambda item: item[1])]
    _Vocabulary(vocab_words)  # fails here, before any worker starts, on a vocabulary without the special tokens
    num_workers = (os.cpu_count() or 1) if num_workers is None else max(1, int(num_workers))
    if num_workers > 1 and tokenize is not None:
        try:
            pickle.dumps(tokenize)
        except Exception as error:  # noqa: BLE001 - any pickling failure means the same thing here
            raise ValueError(f"tokenize must be picklable to run {num_workers} workers ({error}); "
                             "pass a module-level function or use num_workers=1") from None
    paths = tfrecords.sharded_paths(output_prefix, num_shards)
    totals = collections.Counter()
    tasks = enumerate(_iter_blocks(documents, settings.documents_per_block))
    first_tasks = list(itertools.islice(tasks, 2))
    if len(first_tasks) < 2:
        num_workers = 1  # a single block: worker processes would only add their start-up
    tasks = itertools.chain(first_tasks, tasks)
    with contextlib.ExitStack() as stack:
        # The pool first: forking is only safe before the progress bar starts its monitor thread.
        pool = stack.enter_context(_worker_pool(num_workers, (vocab_words, tokenize, settings, num_shards)))
        if shuffle:  # block-ordered spill files beside the outputs, shuffled into them below
            spills = []
            stack.callback(lambda: [os.remove(spill) for spill in spills if os.path.exists(spill)])
            for path in paths:
                directory = os.path.dirname(os.path.abspath(path))
                os.makedirs(directory, exist_ok=True)
                descriptor, spill = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".unshuffled",
                                                     dir=directory)
                os.close(descriptor)
                spills.append(spill)
        else:
            spills = [stack.enter_context(io_utils.atomic_path(path)) for path in paths]
        handles = [stack.enter_context(open(spill, "wb")) for spill in spills]
        writers = [tfrecords.TFRecordFileWriter(handle) for handle in handles]
        total = len(documents) if isinstance(documents, collections.abc.Sized) else None
        bar = stack.enter_context(_progress_bar(progress, total))
        for result in _run_ordered(pool, tasks, num_workers):
            for shard, framed, count in result.pop("framed"):
                writers[shard].write_framed(framed, count)
            totals.update(result)
            if bar is not None:
                bar.update(result["documents"])
                bar.set_postfix(instances=totals["instances"], refresh=False)
        for handle in handles:
            handle.close()
        if shuffle:
            with contextlib.ExitStack() as outputs:
                shard_bar = outputs.enter_context(_progress_bar(progress and num_shards > 1, num_shards, "shard",
                                                                "shuffling shards"))
                for shard, (spill, path) in enumerate(zip(spills, paths)):
                    writer = outputs.enter_context(tfrecords.atomic_tfrecord_writer(path))
                    with open(spill, "rb") as handle:
                        framed = handle.read()
                    os.remove(spill)
                    rng = np.random.default_rng(np.random.SeedSequence([settings.random_seed, shard], spawn_key=(1,)))
                    writer.write_framed(*_shuffled_frames(framed, rng))
                    del framed
                    if shard_bar is not None:
                        shard_bar.update(1)
    masked = totals["masked_tokens"]
    stats = {"documents": totals["documents"], "instances": totals["instances"], "masked_tokens": masked,
             "masked_unk_share": totals["masked_unk"] / masked if masked else 0.0,
             "random_next_share": totals["random_next"] / totals["instances"] if totals["instances"] else 0.0,
             "mean_tokens": totals["tokens"] / totals["instances"] if totals["instances"] else 0.0,
             "files": paths}
    logging.info("pre-training data: %d documents -> %d instances in %d files, %d masked tokens ([UNK] %.2f%%)",
                 stats["documents"], stats["instances"], num_shards, masked, 100 * stats["masked_unk_share"])
    return stats
