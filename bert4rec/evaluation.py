"""BERT4Rec leave-one-out evaluation (the original run.py `EvalHooks`), seeded and vectorized.

For each test user the model scores its held-out last item (the target) against negatives:
  pop100  100 negatives drawn by item popularity without replacement (the paper's protocol; the
          original draws from the vocabulary's interaction counts),
  uni100  100 negatives drawn uniformly from the items,
  full    every real item is a candidate.
Negatives are never the target, never padding/[MASK]/unused ids, and by default never an item of the
user's history. The original meant to exclude the whole history with
`map(lambda x: rated.add(x), history)`; that runs under Python 2.7 (the README's version) but under
Python 3 `map` is a lazy iterator that is never consumed, so only the model's visible input window
(`set(input_ids)`: the last max_seq_length - 1 history items), padding and the target were excluded.
`history_window=N` (only the last N history items excluded, the Python 3 behaviour; the command lines'
`--exclude_history=false`) reproduces that; `histories=None` excludes no history at all.

Item ids follow bert4rec/data.py: real items are 1..num_items, 0 is padding, [MASK] and any extra
ids come after the items. Everything here takes plain numpy arguments.

Determinism: each user's negatives come from their own random stream keyed by (seed, protocol kind,
user index), so they do not depend on batch size, batch order or which other users are evaluated.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np

from common import metrics
from common.io_utils import atomic_write_json

POPULARITY = "pop"
UNIFORM = "uni"
FULL = "full"
DEFAULT_PROTOCOLS = ("pop100", "uni100", "full")
# Distinct random streams per protocol kind, so pop and uni negatives of one user are independent.
# pop50 and pop100 share a stream, so pop50's negatives are the first 50 of pop100's.
_STREAM_IDS = {POPULARITY: 1, UNIFORM: 2}

ORIGINAL_LINE_TEMPLATE = ("ndcg@1:{}, hit@1:{}, ndcg@5:{}, hit@5:{}, ndcg@10:{}, hit@10:{}, "
                          "ap:{}, valid_user:{}")


def parse_protocol(protocol: str, default_num_negatives: int = 100) -> tuple[str, int | None]:
    """"pop100" -> ("pop", 100); "uni" -> ("uni", default_num_negatives); "full" -> ("full", None)."""
    if protocol == FULL:
        return FULL, None
    match = re.fullmatch(r"(pop|uni)(\d*)", protocol)
    if match is None:
        raise ValueError(f"unknown protocol {protocol!r}: expected 'popK', 'uniK' or 'full'")
    count = int(match.group(2)) if match.group(2) else default_num_negatives
    if count < 1:
        raise ValueError(f"protocol {protocol!r} asks for no negatives")
    return match.group(1), count


def _as_histories(histories, batch_size: int) -> list[np.ndarray]:
    if histories is None:
        return [np.zeros(0, dtype=np.int64)] * batch_size
    if len(histories) != batch_size:
        raise ValueError(f"{len(histories)} histories for {batch_size} users")
    return [np.asarray(history, dtype=np.int64).reshape(-1) for history in histories]


class CandidateSampler:
    """Draws seeded negatives and builds candidate sets over a vocabulary of item ids.

    Args:
      item_counts: float/int array indexed by token id (length = vocabulary size): interaction count
        of each item, 0 for padding, [MASK] and other non-item ids. Drives pop sampling.
      num_negatives: negatives for protocols named without a count ("pop", "uni").
      seed: base seed of every user's random stream.
      num_items: if given, real items are exactly ids 1..num_items (an item with count 0 can then
        be a uniform or full-ranking candidate, never a pop one); by default, the ids with count > 0.
    """

    def __init__(self, item_counts, num_negatives: int = 100, seed: int = 12345,
                 num_items: int | None = None):
        counts = np.asarray(item_counts, dtype=np.float64)
        if counts.ndim != 1 or counts.size < 2:
            raise ValueError("item_counts must be a 1-D array over the vocabulary")
        if np.any(counts < 0) or not np.all(np.isfinite(counts)):
            raise ValueError("item_counts must be finite and non-negative")
        self.vocab_size = counts.size
        self.num_negatives = int(num_negatives)
        self.seed = int(seed)
        if num_items is None:
            is_item = counts > 0
        else:
            if not 0 < num_items < self.vocab_size:
                raise ValueError(f"num_items={num_items} does not fit a vocabulary of {self.vocab_size}")
            is_item = np.zeros(self.vocab_size, dtype=bool)
            is_item[1:num_items + 1] = True
        is_item[0] = False  # padding is never an item, whatever its count
        self.item_mask = is_item
        self.item_ids = np.flatnonzero(is_item)
        # Exponential race (Efraimidis-Spirakis): the k smallest Exp(1)/weight keys are a draw of k items
        # without replacement proportional to weight, the successive sampling of
        # np.random.choice(replace=False, p=...) that the original used for pop100.
        popularity = np.where(is_item, counts, 0.0)
        self._inverse_weights = {
            POPULARITY: np.divide(1.0, popularity, out=np.full(self.vocab_size, np.inf),
                                  where=popularity > 0),
            UNIFORM: np.where(is_item, 1.0, np.inf),
        }

    # -- masks ---------------------------------------------------------------------------------

    def _check_targets(self, targets) -> np.ndarray:
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if np.any((targets < 0) | (targets >= self.vocab_size)) or not np.all(self.item_mask[targets]):
            raise ValueError("every target must be a real item id")
        return targets

    def full_candidate_mask(self, targets, histories=None) -> np.ndarray:
        """bool [batch, vocab]: real items, minus the given histories, plus each row's target."""
        targets = self._check_targets(targets)
        histories = _as_histories(histories, targets.size)
        mask = np.broadcast_to(self.item_mask, (targets.size, self.vocab_size)).copy()
        lengths = [history.size for history in histories]
        if sum(lengths):
            columns = np.concatenate(histories)
            if columns.min() < 0 or columns.max() >= self.vocab_size:
                raise ValueError("history ids must lie in [0, vocab_size)")
            mask[np.repeat(np.arange(targets.size), lengths), columns] = False
        mask[np.arange(targets.size), targets] = True  # the target is always a candidate
        return mask

    # -- sampling ------------------------------------------------------------------------------

    def _user_exponentials(self, kind: str, user_index: int) -> np.ndarray:
        # One fresh generator per (seed, kind, user): the draw is a pure function of those three.
        entropy = [self.seed, _STREAM_IDS[kind], int(user_index)]
        generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
        return generator.standard_exponential(size=self.vocab_size)

    def negatives_batch(self, protocol: str, user_indices, targets, histories=None,
                        chunk_size: int = 512) -> np.ndarray:
        """int64 [batch, K] distinct negatives per user, in draw order.

        `histories` lists, per user, the ids to exclude besides the target (None: exclude none).
        Users are processed `chunk_size` at a time to bound the [chunk, vocab] work arrays.
        """
        kind, count = parse_protocol(protocol, self.num_negatives)
        if kind == FULL:
            raise ValueError("'full' has no sampled negatives; use full_candidate_mask")
        user_indices = np.asarray(user_indices, dtype=np.int64).reshape(-1)
        targets = self._check_targets(targets)
        histories = _as_histories(histories, targets.size)
        if user_indices.size != targets.size:
            raise ValueError(f"{user_indices.size} user indices for {targets.size} targets")
        if np.any(user_indices < 0):
            raise ValueError("user indices must be non-negative (they seed the random streams)")
        chunks = []
        for start in range(0, targets.size, chunk_size):
            rows = slice(start, start + chunk_size)
            chunks.append(
                self._negatives_chunk(kind, count, user_indices[rows], targets[rows], histories[rows]))
        return np.concatenate(chunks) if chunks else np.zeros((0, count), dtype=np.int64)

    def _negatives_chunk(self, kind, count, user_indices, targets, histories) -> np.ndarray:
        allowed = self.full_candidate_mask(targets, histories)
        allowed[np.arange(targets.size), targets] = False
        inverse_weights = self._inverse_weights[kind]
        allowed &= np.isfinite(inverse_weights)  # zero-count items cannot be popularity negatives
        available = allowed.sum(axis=1)
        if np.any(available < count):
            raise ValueError(f"a user has only {available.min()} eligible negatives, {count} requested")
        draws = np.stack([self._user_exponentials(kind, user) for user in user_indices])
        with np.errstate(invalid="ignore"):  # 0 * inf on a non-item is overwritten just below
            keys = draws * inverse_weights
        keys[~allowed] = np.inf
        smallest = np.argpartition(keys, count - 1, axis=1)[:, :count]
        order = np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1, kind="stable")
        return np.take_along_axis(smallest, order, axis=1).astype(np.int64)

    def candidates_batch(self, protocol: str, user_indices, targets, histories=None) -> np.ndarray:
        """int64 [batch, 1 + K]: the target in column 0, then its negatives."""
        negatives = self.negatives_batch(protocol, user_indices, targets, histories)
        targets = np.asarray(targets, dtype=np.int64).reshape(-1, 1)
        return np.concatenate([targets, negatives], axis=1)

    def candidates(self, protocol: str, user_index: int, target: int, history=()) -> np.ndarray:
        """One user's candidates, target first; for 'full', the target then every other eligible item."""
        if parse_protocol(protocol, self.num_negatives)[0] == FULL:
            mask = self.full_candidate_mask([target], [history])[0]
            mask[target] = False
            return np.concatenate([[target], np.flatnonzero(mask)]).astype(np.int64)
        return self.candidates_batch(protocol, [user_index], [target], [history])[0]


class RankingEvaluator:
    """Streams batches of masked-last-item logits and accumulates target ranks per protocol.

    Args:
      sampler: the CandidateSampler (fixes vocabulary, popularity and seed).
      protocols: names such as "pop100", "uni100", "full".
      histories: user index -> item ids of that user's history, excluded from negatives and
        full-ranking candidates; None excludes no history.
      history_window: if set, only the last `history_window` history items are excluded (the
        original under Python 3 excluded just its input window: max_seq_length - 1 items before
        the target, when histories stop before the target); None: the whole history.
      ks: cut-offs for ndcg@k / hit@k.
    """

    def __init__(self, sampler: CandidateSampler, protocols: Sequence[str] = DEFAULT_PROTOCOLS,
                 histories: Mapping[int, Sequence[int]] | None = None,
                 history_window: int | None = None, ks: Sequence[int] = metrics.DEFAULT_KS):
        for protocol in protocols:
            parse_protocol(protocol, sampler.num_negatives)  # fail early on a bad name
        if history_window is not None and history_window < 0:
            raise ValueError("history_window must be non-negative")
        self.sampler = sampler
        self.protocols = tuple(protocols)
        self.histories = histories
        self.history_window = history_window
        self.ks = tuple(ks)
        self.reset()

    def reset(self) -> None:
        self._ranks = {protocol: [] for protocol in self.protocols}

    def _excluded_histories(self, user_indices: np.ndarray):
        if self.histories is None:
            return None
        excluded = []
        for user in user_indices:
            if int(user) not in self.histories:
                raise KeyError(f"no history for user index {int(user)}")
            history = np.asarray(self.histories[int(user)], dtype=np.int64)
            if self.history_window is not None:
                history = history[history.size - min(self.history_window, history.size):]
            excluded.append(history)
        return excluded

    def update(self, user_indices, targets, logits) -> None:
        """Adds one batch: user indices [B], target item ids [B], scores over the vocabulary [B, V']."""
        user_indices = np.asarray(user_indices, dtype=np.int64).reshape(-1)
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[0] != targets.size or user_indices.size != targets.size:
            raise ValueError(f"expected logits [{targets.size}, vocab], got {logits.shape} "
                             f"for {user_indices.size} users")
        if logits.shape[1] < self.sampler.vocab_size:
            raise ValueError(f"logits cover {logits.shape[1]} ids, "
                             f"the vocabulary has {self.sampler.vocab_size}")
        logits = logits[:, :self.sampler.vocab_size]  # ids past the vocabulary are never candidates
        histories = self._excluded_histories(user_indices)
        for protocol in self.protocols:
            if parse_protocol(protocol)[0] == FULL:
                mask = self.sampler.full_candidate_mask(targets, histories)
                ranks = metrics.target_ranks(logits, targets, candidate_mask=mask)
            else:
                candidates = self.sampler.candidates_batch(protocol, user_indices, targets, histories)
                ranks = metrics.target_ranks(np.take_along_axis(logits, candidates, axis=1), 0)
            self._ranks[protocol].append(ranks)

    def ranks(self, protocol: str) -> np.ndarray:
        """Every rank accumulated so far for `protocol`, in update order."""
        parts = self._ranks[protocol]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def result(self) -> dict:
        """protocol -> ranking_metrics dict (ndcg@k, hit@k, ap, valid_user)."""
        return {protocol: metrics.ranking_metrics(self.ranks(protocol), self.ks)
                for protocol in self.protocols}


def evaluate_logits(item_counts, user_indices, targets, logits, histories=None,
                    protocols: Sequence[str] = DEFAULT_PROTOCOLS, history_window: int | None = None, num_negatives: int = 100, seed: int = 12345,
                    num_items: int | None = None, ks: Sequence[int] = metrics.DEFAULT_KS) -> dict:
    """One-shot evaluation of a full logits matrix; see RankingEvaluator for the arguments."""
    sampler = CandidateSampler(item_counts, num_negatives=num_negatives, seed=seed, num_items=num_items)
    evaluator = RankingEvaluator(sampler, protocols, histories, history_window, ks)
    evaluator.update(user_indices, targets, logits)
    return evaluator.result()


def format_original_line(result: Mapping) -> str:
    """The original run.py summary line for one protocol's metrics.

    The original prints a full-width comma after hit@1 ("hit@1:{}， ndcg@5"); this line uses an ASCII
    comma. valid_user is printed as a float (e.g. 6040.0), as the original's float counter was.
    """
    return ORIGINAL_LINE_TEMPLATE.format(
        result["ndcg@1"], result["hit@1"], result["ndcg@5"], result["hit@5"],
        result["ndcg@10"], result["hit@10"], result[metrics.MRR_KEY], float(result[metrics.COUNT_KEY]))


def _json_safe(value):
    # Strict JSON has no NaN (an empty evaluation's averages): store null instead.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


def write_eval_results(path, results_by_protocol: Mapping[str, Mapping],
                       extra: Mapping | None = None) -> None:
    """Atomically writes {"metrics": {protocol: metrics}, "lines": {protocol: original line}, **extra}."""
    payload = {
        "metrics": {protocol: dict(result) for protocol, result in results_by_protocol.items()},
        "lines": {protocol: format_original_line(result)
                  for protocol, result in results_by_protocol.items()},
    }
    for key, value in (extra or {}).items():
        if key in payload:
            raise ValueError(f"extra key {key!r} collides with a reserved key")
        payload[key] = value
    atomic_write_json(path, _json_safe(payload))
