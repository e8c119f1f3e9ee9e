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

Order and scale, as Google's script: all documents are shuffled once (seeded), every dupe pass makes instances from
every document, a random-next segment comes from any document of the corpus, and all instances end up shuffled.
So that corpora far larger than memory work, a first pass tokenizes the documents into a token store (one flat id
array, sentence offsets, document ranges; memory-mapped files when writing); the second pass reads the documents in
the shuffled order, `documents_per_block` (fewer when long: see `_tasks`) per task. Each task has its own random
streams (`_task_rng`), so workers share the tasks (`common.parallel.OrderedPool`) and the output is the same for any number of workers; per-chunk
choices are a few scalar draws, and assembly, truncation and masking of a task's instances are vectorised with
NumPy. Every output file (an even share of every task) is finally shuffled as a whole.
"""

from __future__ import annotations

import array
import bisect
import collections
import collections.abc
import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import random
import shutil
import struct
import sys
import tempfile
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from common import io_utils, tfrecords
from common.parallel import OrderedPool, task_seed
from common.tokenization import CLS_TOKEN, CONTINUATION_PREFIX, MASK_TOKEN, SEP_TOKEN, UNK_TOKEN, load_vocab

DEFAULT_DOCUMENTS_PER_BLOCK = 256  # documents per unit of parallel work (tokenizing, then making instances)
_TASK_TOKENS = 1 << 21  # tokens x dupe passes per instance-making task: about 20k instances, ~100 MB of arrays
_BLOCK_CHARACTERS = 1 << 21  # characters per tokenizing block


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


class TokenStore:
    """The tokenized corpus, in memory or memory-mapped from a folder (so corpora far larger than memory work).

    `tokens` [T] int32 ids of every kept sentence, one after another; sentence k is
    `tokens[offsets[k]:offsets[k + 1]]` (`offsets` [S + 1] int64); document d holds sentences
    `documents[d, 0]` to `documents[d, 1] - 1` (`documents` [D, 2] int64, non-empty documents only, in corpus order).
    """

    FILES = ("tokens.int32", "offsets.int64", "documents.int64")

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, documents: np.ndarray):
        self.tokens, self.offsets, self.documents = tokens, offsets, documents

    @property
    def num_documents(self) -> int:
        return len(self.documents)

    @classmethod
    def open(cls, folder: str) -> "TokenStore":
        arrays = []
        for name, dtype in zip(cls.FILES, (np.int32, np.int64, np.int64)):
            path = os.path.join(folder, name)
            if os.path.getsize(path) == 0:  # np.memmap refuses empty files
                arrays.append(np.zeros(0, dtype=dtype))
            else:
                arrays.append(np.asarray(np.memmap(path, dtype=dtype, mode="r")))  # plain views index faster
        tokens, offsets, documents = arrays
        return cls(tokens, offsets, documents.reshape(-1, 2))


class _TokenStoreWriter:
    """Appends tokenized blocks to a `TokenStore`'s three files in `folder` (or to memory with `folder=None`)."""

    def __init__(self, folder: str | None):
        self.folder = folder
        self.num_tokens = 0
        self.num_sentences = 0
        self.num_documents = 0
        if folder is None:
            self._parts: tuple[list, list, list] = ([], [np.zeros(1, np.int64)], [])
        else:
            self._handles = [open(os.path.join(folder, name), "wb") for name in TokenStore.FILES]
            self._handles[1].write(np.zeros(1, np.int64).tobytes())

    def append(self, ids: np.ndarray, sentence_lengths: np.ndarray, document_sentences: np.ndarray) -> None:
        """ids [t] int32; sentence_lengths [s] (all > 0); document_sentences [d] sentences per document (all > 0)."""
        offsets = self.num_tokens + np.cumsum(sentence_lengths, dtype=np.int64)
        ends = self.num_sentences + np.cumsum(document_sentences, dtype=np.int64)
        documents = np.stack([ends - document_sentences, ends], axis=1).astype(np.int64)
        parts = (ids.astype(np.int32, copy=False), offsets, documents.ravel())
        if self.folder is None:
            for collected, part in zip(self._parts, parts):
                collected.append(part)
        else:
            for handle, part in zip(self._handles, parts):
                handle.write(part.tobytes())
        self.num_tokens += len(ids)
        self.num_sentences += len(sentence_lengths)
        self.num_documents += len(document_sentences)

    def finish(self) -> TokenStore:
        if self.folder is None:
            tokens, offsets, documents = (np.concatenate(parts) if parts else np.zeros(0, dtype)
                                          for parts, dtype in zip(self._parts, (np.int32, np.int64, np.int64)))
            return TokenStore(tokens, offsets, documents.reshape(-1, 2))
        for handle in self._handles:
            handle.close()
        return TokenStore.open(self.folder)

    def close(self) -> None:
        if self.folder is not None:
            for handle in self._handles:
                handle.close()


def _tokenize_documents(documents: Sequence[Sequence[str]], vocab: _Vocabulary,
                        tokenize: Callable[[str], list[str]] | None,
                        counts: collections.Counter | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents -> (ids [t] int32, sentence lengths [s], sentences per non-empty document [d]); `counts` gets
    "empty_sentences" (no token: dropped) and "unk_sentences" (kept, with an [UNK])."""
    ids = array.array("i")  # 4 bytes an id, not a Python int's 28
    empty = with_unknown = 0
    sentence_lengths: list[int] = []
    document_sentences: list[int] = []
    lookup = vocab.lookup
    for document in documents:
        count = 0
        for sentence in document:
            tokens = tokenize(sentence) if tokenize is not None else sentence.split()
            if tokens:  # Google drops sentences without tokens, then documents without sentences
                start = len(ids)
                ids.extend(map(lookup, tokens))
                sentence_lengths.append(len(tokens))
                count += 1
                if counts is not None and vocab.unk_id in ids[start:]:
                    with_unknown += 1
            else:
                empty += 1
        if count:
            document_sentences.append(count)
    if counts is not None:
        counts.update(empty_sentences=empty, unk_sentences=with_unknown)
    return (np.frombuffer(ids, dtype=np.int32).copy(), np.array(sentence_lengths, dtype=np.int64),
            np.array(document_sentences, dtype=np.int64))


_PERMUTATION, _SEGMENTING, _MASKING, _SHARDING = 0, 1, 2, 3  # what a random stream is for


def _document_order(settings: InstanceSettings, num_documents: int) -> np.ndarray:
    """Google's `rng.shuffle(all_documents)`: one seeded permutation of every document of the corpus."""
    return np.random.default_rng(task_seed(settings.random_seed, _PERMUTATION)).permutation(num_documents)


def _task_rng(settings: InstanceSettings, task_index: int, purpose: int, pass_index: int = 0) -> np.random.SeedSequence:
    # Deviation from Google's one sequential stream, to parallelise: each task (`documents_per_block` consecutive
    # documents of the shuffled order) has its own random streams per (seed, task, purpose, dupe pass), so the output
    # is the same for any number of workers. Random-next documents are still drawn from the whole corpus.
    return task_seed(settings.random_seed, task_index, purpose, pass_index)


def _segment_pass(store: TokenStore, document_ids: Sequence[int], settings: InstanceSettings,
                  rng: random.Random) -> list[tuple[int, int, int, int, bool]]:
    """One dupe pass over some documents: per instance (a_start, a_end, b_start, b_end, is_random_next) in the
    store's token coordinates, untrimmed (Google's `create_instances_from_document`)."""
    all_offsets, documents = store.offsets, store.documents
    num_documents = len(documents)
    max_num_tokens = settings.max_num_tokens
    short_seq_prob = settings.short_seq_prob
    pairs = settings.next_sentence
    if pairs and num_documents < 2:
        raise ValueError("next-sentence instances need at least 2 non-empty documents "
                         f"(got {num_documents}); give more documents or use next_sentence=False")
    uniform = rng.random

    def randint(low: int, high: int) -> int:  # uniform on [low, high]; random.randint is several times slower
        return low + int(uniform() * (high - low + 1))

    spans = []
    for document_index in document_ids:
        first, end = (int(value) for value in documents[document_index])
        offsets = all_offsets[first:end + 1].tolist()  # this document's sentence k: offsets[k]:offsets[k + 1]
        num_sentences = end - first
        target = max_num_tokens
        if uniform() < short_seq_prob:
            target = randint(2, max_num_tokens)
        chunk_first = 0
        while chunk_first < num_sentences:
            # The chunk: whole sentences until `target` tokens are reached or the document ends.
            last = bisect.bisect_left(offsets, offsets[chunk_first] + target, chunk_first + 1, num_sentences + 1) - 1
            last = min(last, num_sentences - 1)
            chunk_sentences = last - chunk_first + 1
            if not pairs:
                spans.append((offsets[chunk_first], offsets[last + 1], 0, 0, False))
                chunk_first = last + 1
                continue
            a_sentences = randint(1, chunk_sentences - 1) if chunk_sentences >= 2 else 1
            a_start, a_end = offsets[chunk_first], offsets[chunk_first + a_sentences]
            if chunk_sentences == 1 or uniform() < 0.5:
                for _ in range(10):  # any document of the corpus; Google retries 10 times to avoid this one
                    other = randint(0, num_documents - 1)
                    if other != document_index:
                        break
                other_first, other_end = (int(value) for value in documents[other])
                start_sentence = randint(other_first, other_end - 1)
                # Whole sentences from there until B reaches target - len(A) tokens (at least one sentence); each
                # sentence has a token, so no more than that many sentences are read.
                target_b = target - (a_end - a_start)
                stop = min(other_end, start_sentence + max(target_b, 1))
                b_offsets = all_offsets[start_sentence:stop + 1]
                b_start = int(b_offsets[0])
                b_sentences = min(int(np.searchsorted(b_offsets[1:], b_start + target_b)), len(b_offsets) - 2) + 1
                spans.append((a_start, a_end, b_start, int(b_offsets[b_sentences]), True))
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


def _assemble(tokens: np.ndarray, spans: np.ndarray, settings: InstanceSettings, np_rng: np.random.Generator,
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
    not_token = (column == 0) | (column == la + 1) | (column >= end - (1 if pairs else 0))
    source[not_token] = 0
    ids = np.asarray(tokens[source], dtype=np.int32)  # a gather: only the pages of a memory-mapped store it needs
    ids[not_token] = 0
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


def _empty_instances(settings: InstanceSettings) -> _InstanceArrays:
    empty = np.zeros((0, settings.max_seq_length), dtype=np.int32)
    empty_predictions = np.zeros((0, settings.max_predictions_per_seq), dtype=np.int32)
    return _InstanceArrays(empty, np.zeros(0, np.int64), empty.astype(np.int8), np.zeros(0, bool),
                           empty_predictions, empty_predictions.copy(), np.zeros(0, np.int64))


def _task_instances(store: TokenStore, task: tuple[int, np.ndarray, int, int], settings: InstanceSettings,
                    vocab: _Vocabulary) -> _InstanceArrays:
    """Dupe passes [first, end) over some documents of the shuffled order (a `_tasks` item), shuffled together."""
    task_index, document_ids, first_pass, end_pass = task
    spans = []
    for pass_index in range(first_pass, end_pass):
        seed = _task_rng(settings, task_index, _SEGMENTING, pass_index).generate_state(4)
        spans.extend(_segment_pass(store, document_ids.tolist(), settings,
                                   random.Random(int.from_bytes(seed.tobytes(), "little"))))
    if not spans:
        return _empty_instances(settings)
    span_array = np.array([span[:4] for span in spans], dtype=np.int64).reshape(-1, 4)
    is_random_next = np.array([span[4] for span in spans], dtype=bool)
    np_rng = np.random.default_rng(_task_rng(settings, task_index, _MASKING))
    ids, lengths, segment_ids = _assemble(store.tokens, span_array, settings, np_rng, vocab)
    positions, labels, counts = _mask(ids, lengths, settings, np_rng, vocab)
    instances = _InstanceArrays(ids, lengths, segment_ids, is_random_next, positions, labels, counts)
    return instances.take(np_rng.permutation(len(instances)))


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
    """Consecutive blocks of documents, the units of tokenization work: `documents_per_block` documents, or fewer
    holding about `_BLOCK_CHARACTERS` characters (a block of long videos stays small)."""
    iterator = (_check_document(document, index) for index, document in enumerate(_iter_documents(documents)))
    block, characters = [], 0
    for document in iterator:
        block.append(document)
        characters += sum(map(len, document))
        if len(block) >= documents_per_block or characters >= _BLOCK_CHARACTERS:
            yield block
            block, characters = [], 0
    if block:
        yield block


def _tasks(store: TokenStore, settings: InstanceSettings) -> Iterator[tuple[int, np.ndarray, int, int]]:
    """(task index, document ids, first dupe pass, end pass): consecutive stretches of the shuffled document order,
    at most `documents_per_block` documents and about `_TASK_TOKENS` tokens x passes each (bounds a task's arrays);
    a document longer than that alone, its passes split over several tasks. A function of the store and the settings
    only, so the same for any number of workers."""
    order = _document_order(settings, store.num_documents)
    starts = store.offsets[store.documents[:, 0]] if store.num_documents else np.zeros(0, np.int64)
    lengths = (store.offsets[store.documents[:, 1]] - starts)[order] if store.num_documents else starts
    passes = settings.dupe_factor
    task_index, begin = 0, 0
    while begin < len(order):
        work = int(lengths[begin]) * passes
        if work > _TASK_TOKENS:  # a long document: its passes a few at a time
            step = max(1, _TASK_TOKENS // max(1, int(lengths[begin])))
            for first_pass in range(0, passes, step):
                yield task_index, order[begin:begin + 1], first_pass, min(passes, first_pass + step)
                task_index += 1
            begin += 1
            continue
        end = begin + 1
        while end < len(order) and end - begin < settings.documents_per_block:
            work += int(lengths[end]) * passes
            if work > _TASK_TOKENS:
                break
            end += 1
        yield task_index, order[begin:end], 0, passes
        task_index += 1
        begin = end


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
    writer = _TokenStoreWriter(None)
    for block in _iter_blocks(documents, settings.documents_per_block):
        writer.append(*_tokenize_documents(block, vocab, tokenize))
    store = writer.finish()
    instances = []
    for task in _tasks(store, settings):
        instances.extend(_to_training_instances(_task_instances(store, task, settings, vocab), vocab))
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
                             input_context=None, cycle_length: int = 4, shuffle_buffer: int = 100,
                             repeat: bool | None = None, drop_remainder: bool | None = None):
    """Batched pre-training features from the written TFRecords (Google's `input_fn_builder`: for training the
    files are shuffled and `cycle_length` of them interleaved, then records shuffled in a `shuffle_buffer`; Google's
    evaluation input also repeats and drops the remainder: pass `repeat=True, drop_remainder=True`). `repeat` and
    `drop_remainder` default to `is_training`."""
    spec = pretraining_feature_spec(max_seq_length, max_predictions_per_seq, next_sentence)
    return tfrecords.make_dataset(file_patterns, spec, batch_size, is_training, seed=seed,
                                  shuffle_buffer=shuffle_buffer, input_context=input_context,
                                  cycle_length=cycle_length, repeat=repeat, drop_remainder=drop_remainder)


# ---- writing, in parallel --------------------------------------------------------------------------------------

_worker_state: dict = {}


def _init_worker(vocab_words, tokenize, settings: InstanceSettings, num_shards: int, store_folder: str) -> None:
    _worker_state.update(vocab=_Vocabulary(vocab_words), tokenize=tokenize, settings=settings, num_shards=num_shards,
                         store_folder=store_folder, store=None)


def _tokenize_task(documents: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, collections.Counter]:
    """First pass (runs in a worker): a block of documents -> its token ids, sentence/document lengths, counts."""
    counts = collections.Counter()
    arrays = _tokenize_documents(documents, _worker_state["vocab"], _worker_state["tokenize"], counts)
    return (*arrays, counts)


def _write_task(task) -> dict:
    """Second pass (runs in a worker): some documents of the shuffled order -> their instances serialized and
    framed per shard, and their statistics."""
    task_index, document_ids, first_pass, _ = task
    settings, vocab, num_shards = _worker_state["settings"], _worker_state["vocab"], _worker_state["num_shards"]
    if _worker_state["store"] is None:  # opened once per worker, after the first pass wrote it
        _worker_state["store"] = TokenStore.open(_worker_state["store_folder"])
    arrays = _task_instances(_worker_state["store"], task, settings, vocab)
    framed = []
    if len(arrays):
        # Shards take the task's (shuffled) instances in turn from a seeded start: balanced and worker-independent.
        shard_rng = np.random.default_rng(_task_rng(settings, task_index, _SHARDING))
        start = int(shard_rng.integers(num_shards))
        shard_of = (start + np.arange(len(arrays))) % num_shards
        by_shard = np.argsort(shard_of, kind="stable")  # each shard's records contiguous, in task order
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
    return {"framed": framed, "documents": len(document_ids) if first_pass == 0 else 0, "instances": len(arrays),
            "masked_tokens": int(arrays.masked_lm_counts.sum()),
            "masked_unk": int(((arrays.masked_lm_ids == vocab.unk_id) & valid).sum()),
            "random_next": int(arrays.is_random_next.sum()), "tokens": int(arrays.lengths.sum())}


def _progress_bar(enabled: bool, total: int | None = None, unit: str = "doc", desc: str = "pre-training data"):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, mininterval=1.0)


def _frame_bounds(handle) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of every TFRecord frame (8-byte length, 4-byte CRC, data, 4-byte CRC) of an open file,
    read header by header (the records themselves are skipped, not read)."""
    size = os.fstat(handle.fileno()).st_size
    starts, ends = [], []
    position = 0
    while position < size:
        header = os.pread(handle.fileno(), 8, position)
        if len(header) < 8 or position + 12 > size:
            raise ValueError("truncated TFRecord frame")
        (length,) = struct.unpack("<Q", header)
        starts.append(position)
        position += 16 + length
        ends.append(position)
    if position != size:
        raise ValueError("truncated TFRecord frame")
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


_SHUFFLE_WRITE_BYTES = 1 << 23  # frames gathered per write while shuffling a file


def _write_shuffled(spill_path: str, writer: "tfrecords.TFRecordFileWriter", rng: np.random.Generator) -> None:
    """The spill file's frames in a random order (frames are self-contained: moving them needs no re-framing).
    Memory: the frame offsets and one write buffer, whatever the file's size."""
    with open(spill_path, "rb") as handle:
        starts, ends = _frame_bounds(handle)
        order = rng.permutation(len(starts))
        buffer, count = bytearray(), 0
        for start, end in zip(starts[order].tolist(), ends[order].tolist()):
            buffer += os.pread(handle.fileno(), end - start, start)
            count += 1
            if len(buffer) >= _SHUFFLE_WRITE_BYTES:
                writer.write_framed(bytes(buffer), count)
                buffer, count = bytearray(), 0
        if count:
            writer.write_framed(bytes(buffer), count)


def output_paths(output, num_shards: int = 1) -> list[str]:
    """The files `write_pretraining_data` writes: a list (or Google's comma-separated `--output_file` string with a
    comma) as given, else `{output}-{i:05d}-of-{num_shards:05d}.tfrecord` for i < num_shards."""
    if isinstance(output, str) and "," in output:
        output = output.split(",")
    if isinstance(output, (list, tuple)):
        paths = [os.fspath(path).strip() for path in output if os.fspath(path).strip()]
        if not paths:
            raise ValueError("no output file given")
        if len(set(paths)) != len(paths):
            raise ValueError(f"output files repeat: {paths}")
        return paths
    return tfrecords.sharded_paths(output, num_shards)


def _work_folder(paths: list[str], temp_dir: str | None) -> str:
    """Where the token store and unshuffled spill files go: `temp_dir`, else beside a local output (same disk)."""
    if temp_dir is None:
        temp_dir = None if io_utils.is_remote(paths[0]) else io_utils.dirname(paths[0])
    if temp_dir is not None:
        os.makedirs(temp_dir, exist_ok=True)
    return tempfile.mkdtemp(prefix=".pretraining-data-", dir=temp_dir)


def write_pretraining_data(documents, output_prefix, vocab_file: str, *, tokenize=None, num_shards: int = 1,
                           num_workers: int | None = None, progress: bool = True, shuffle: bool = True,
                           temp_dir: str | None = None, **instance_kwargs) -> dict:
    """Writes pre-training instances of `documents` to `{output_prefix}-{i:05d}-of-{n:05d}.tfrecord`, i < num_shards,
    or to exactly the files of a list (or comma-separated string) `output_prefix` (Google's `--output_file`).

    `documents`: an iterable of documents (each a sequence of sentence strings), or a callable returning one. As
    Google's script: all documents are shuffled (seeded), each dupe pass makes instances from every document, and a
    random-next segment comes from any document of the corpus. For corpora larger than memory, a first pass
    tokenizes the documents block by block into a memory-mapped token store (a temp folder in `temp_dir`, default
    beside the outputs, removed at the end); the second pass makes the instances of `documents_per_block` documents
    of the shuffled order per task. `num_workers` processes (default: all cores) share both passes; the files are
    the same for any number of workers and appear only when complete. Every task's instances are dealt evenly to
    the files; with `shuffle` each file is then permuted as a whole (record by record from a spill file: memory
    stays flat), as Google shuffles all instances. `tokenize` must be picklable (a module-level function or a
    tokenizer's bound method) when workers are used. `instance_kwargs` are
    `create_training_instances`'s. Returns the statistics: documents, instances, masked_tokens, masked_unk_share
    (share of masked tokens that are [UNK]), random_next_share, mean_tokens (per instance, [CLS]/[SEP] included),
    sentences (kept), empty_sentences (dropped: no token), unk_sentences (kept, holding an [UNK]), store_tokens,
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
    paths = output_paths(output_prefix, num_shards)
    num_shards = len(paths)
    totals = collections.Counter()
    blocks = _iter_blocks(documents, settings.documents_per_block)
    first_blocks = list(itertools.islice(blocks, 2))
    if len(first_blocks) < 2:
        num_workers = 1  # a single block: worker processes would only add their start-up
    blocks = itertools.chain(first_blocks, blocks)
    work = _work_folder(paths, temp_dir)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        # The pool first: forking is only safe before the progress bar starts its monitor thread.
        pool = stack.enter_context(OrderedPool(
            num_workers, _init_worker, (vocab_words, tokenize, settings, num_shards, work),
            finalizer=_worker_state.clear))
        total = len(documents) if isinstance(documents, collections.abc.Sized) else None
        store_writer = _TokenStoreWriter(work)
        with _progress_bar(progress, total, desc="tokenizing") as bar:
            try:
                for ids, sentence_lengths, document_sentences, counts in pool.map(_tokenize_task, blocks):
                    store_writer.append(ids, sentence_lengths, document_sentences)
                    totals.update(counts)
                    if bar is not None:
                        bar.update(settings.documents_per_block)
            finally:
                store_writer.close()
        store = store_writer.finish()
        if pool.num_workers <= 1:
            _worker_state["store"] = store
        if settings.next_sentence and store.num_documents < 2:
            raise ValueError(f"next-sentence instances need at least 2 non-empty documents (got "
                             f"{store.num_documents}); give more documents or use next_sentence=False")

        if shuffle:  # task-ordered spill files, shuffled into the outputs below
            spills = [os.path.join(work, f"shard-{shard:05d}.unshuffled") for shard in range(num_shards)]
            handles = [stack.enter_context(open(spill, "wb")) for spill in spills]
        else:
            handles = [stack.enter_context(io_utils.atomic_output(path, "wb")) for path in paths]
        writers = [tfrecords.TFRecordFileWriter(handle) for handle in handles]
        with _progress_bar(progress, store.num_documents) as bar:
            for result in pool.map(_write_task, _tasks(store, settings)):
                for shard, framed, count in result.pop("framed"):
                    writers[shard].write_framed(framed, count)
                totals.update(result)
                if bar is not None:
                    bar.update(result["documents"])
                    bar.set_postfix(instances=totals["instances"], refresh=False)
        if shuffle:
            for handle in handles:
                handle.close()
            with contextlib.ExitStack() as outputs:
                shard_bar = outputs.enter_context(_progress_bar(progress and num_shards > 1, num_shards, "shard",
                                                                "shuffling shards"))
                for shard, (spill, path) in enumerate(zip(spills, paths)):
                    writer = outputs.enter_context(tfrecords.atomic_tfrecord_writer(path))
                    rng = np.random.default_rng(np.random.SeedSequence([settings.random_seed, shard], spawn_key=(1,)))
                    _write_shuffled(spill, writer, rng)
                    os.remove(spill)
                    if shard_bar is not None:
                        shard_bar.update(1)
    masked = totals["masked_tokens"]
    stats = {"documents": store.num_documents, "instances": totals["instances"], "masked_tokens": masked,
             "masked_unk_share": totals["masked_unk"] / masked if masked else 0.0,
             "random_next_share": totals["random_next"] / totals["instances"] if totals["instances"] else 0.0,
             "mean_tokens": totals["tokens"] / totals["instances"] if totals["instances"] else 0.0,
             "sentences": len(store.offsets) - 1, "empty_sentences": totals["empty_sentences"],
             "unk_sentences": totals["unk_sentences"], "store_tokens": len(store.tokens), "files": paths}
    logging.info("pre-training data: %d documents -> %d instances in %d files, %d masked tokens ([UNK] %.2f%%)",
                 stats["documents"], stats["instances"], num_shards, masked, 100 * stats["masked_unk_share"])
    return stats
