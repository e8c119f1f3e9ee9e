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

import dataclasses
import math
import re
from typing import Mapping, Sequence

import numpy as np

from bert4rec import masking
from common import metrics
from common.io_utils import atomic_write_json

POPULARITY = "pop"
UNIFORM = "uni"
FULL = "full"
DEFAULT_PROTOCOLS = ("pop100", "uni100", "full")
# Distinct random streams per protocol kind, so pop and uni negatives of one user are independent.
# pop50 and pop100 share a stream, so pop50's negatives are the first 50 of pop100's (up to 256).
_STREAM_IDS = {POPULARITY: 1, UNIFORM: 2}
# A user's streams: race keys (per item id), tail draws with replacement, tail arrival gaps.
_RACE_STREAM, _DRAW_STREAM, _GAP_STREAM = 0, 1, 2
_HEAD_ITEMS = 256  # most popular items, raced explicitly: the tail left to rejection has no dominant item
_MAX_DRAWS = 1024  # tail draws (at least 4 per negative) before a user falls back to a race over all items

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

    Sampling: exact successive sampling without replacement, proportional to popularity (pop) or
    uniform (uni) over the items that are not the target or excluded; this is the law of the
    original's rounds of `np.random.choice(ids, 101, replace=False, p)` filtered by `rated`. It is an
    exponential race (the K smallest Exp(1)/weight keys, in key order), computed in two parts so that a
    user costs O(K), not O(items): the `_HEAD_ITEMS` most popular items get explicit keys; the rest
    (the tail, where no item dominates) is drawn with replacement through a cumulative sum and
    `searchsorted`, rejecting excluded and repeated items, and its arrival times follow from the race's
    memoryless gaps (Exp(1) / weight not yet drawn). The K earliest of both are the negatives. A user
    whose excluded items hold most of the tail (no K negatives after `_MAX_DRAWS` draws) finishes the
    tail's order with explicit keys over what is left, which keeps the law exact. Every random number is
    a counter-based SplitMix64 output (`bert4rec.masking`) keyed by (seed, kind, user): a chunk of users
    is drawn in one vectorised call, and a user's negatives depend on nothing else.
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
        popularity = np.where(is_item, counts, 0.0)
        self._weights = {POPULARITY: popularity, UNIFORM: is_item.astype(np.float64)}
        self._support = {kind: np.flatnonzero(weights > 0) for kind, weights in self._weights.items()}
        # Popularity's heaviest items form the head (explicit race keys); the rest is drawn by rejection.
        self._head, self._tail, self._tail_cdf, self._tail_weight = {}, {}, {}, {}
        for kind, support in self._support.items():
            by_weight = support[np.argsort(-self._weights[kind][support], kind="stable")]
            head_size = min(_HEAD_ITEMS, by_weight.size) if kind == POPULARITY else 0
            self._head[kind], tail = np.sort(by_weight[:head_size]), np.sort(by_weight[head_size:])
            self._tail[kind] = tail
            cdf = np.cumsum(self._weights[kind][tail])
            self._tail_weight[kind] = float(cdf[-1]) if cdf.size else 0.0
            # Ends at exactly 1.0, so a uniform in [0, 1) always lands on a tail item.
            self._tail_cdf[kind] = cdf / cdf[-1] if cdf.size else cdf

    # -- masks ---------------------------------------------------------------------------------

    def _check_targets(self, targets) -> np.ndarray:
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if np.any((targets < 0) | (targets >= self.vocab_size)) or not np.all(self.item_mask[targets]):
            raise ValueError("every target must be a real item id")
        return targets

    def _excluded_pairs(self, targets: np.ndarray, histories) -> np.ndarray:
        """Sorted unique int64 keys row * vocab_size + item of each row's target and history ids."""
        histories = _as_histories(histories, targets.size)
        lengths = [history.size for history in histories]
        rows = np.arange(targets.size, dtype=np.int64)
        keys = [rows * self.vocab_size + targets]
        if sum(lengths):
            columns = np.concatenate(histories)
            if columns.min() < 0 or columns.max() >= self.vocab_size:
                raise ValueError("history ids must lie in [0, vocab_size)")
            keys.append(np.repeat(rows, lengths) * self.vocab_size + columns)
        return np.unique(np.concatenate(keys))

    def full_candidate_mask(self, targets, histories=None) -> np.ndarray:
        """bool [batch, vocab]: real items, minus the given histories, plus each row's target."""
        targets = self._check_targets(targets)
        excluded = self._excluded_pairs(targets, histories)
        mask = np.broadcast_to(self.item_mask, (targets.size, self.vocab_size)).copy()
        mask.reshape(-1)[excluded] = False
        mask[np.arange(targets.size), targets] = True  # the target is always a candidate
        return mask

    def excluded_history_columns(self, targets, histories) -> tuple[np.ndarray, np.ndarray]:
        """The items full ranking leaves out per row: (int64 ids [batch, H], bool valid [batch, H]).

        Distinct real items of each history other than the target; padded columns hold the target id
        and are not valid.
        """
        targets = self._check_targets(targets)
        excluded = self._excluded_pairs(targets, histories)
        rows, items = np.divmod(excluded, self.vocab_size)
        keep = self.item_mask[items] & (items != targets[rows])
        rows, items = rows[keep], items[keep]
        per_row = np.bincount(rows, minlength=targets.size)
        width = int(per_row.max()) if per_row.size else 0
        columns = np.repeat(targets[:, None], width, axis=1)
        valid = np.zeros((targets.size, width), dtype=bool)
        slot = np.arange(rows.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        columns[rows, slot] = items
        valid[rows, slot] = True
        return columns, valid

    # -- sampling ------------------------------------------------------------------------------

    def _race_keys(self, kind: str, user_keys: np.ndarray, items: np.ndarray) -> np.ndarray:
        """float64 [users, items]: Exp(1) / weight per (user, item), keyed by the item id itself."""
        uniforms = masking.uniform_from_bits(masking.stream_output(user_keys[:, None], items[None, :]))
        return -np.log1p(-uniforms) / self._weights[kind][items]

    def negatives_batch(self, protocol: str, user_indices, targets, histories=None,
                        chunk_size: int = 4096) -> np.ndarray:
        """int64 [batch, K] distinct negatives per user, in draw order.

        `histories` lists, per user, the ids to exclude besides the target (None: exclude none).
        Users are processed `chunk_size` at a time (the result does not depend on it).
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
        vocab, weights = self.vocab_size, self._weights[kind]
        head, tail, tail_cdf = self._head[kind], self._tail[kind], self._tail_cdf[kind]
        excluded = self._excluded_pairs(targets, histories)
        rows, items = np.divmod(excluded, vocab)
        eligible = self._support[kind].size - np.bincount(rows, weights=weights[items] > 0,
                                                          minlength=targets.size)
        if np.any(eligible < count):
            raise ValueError(f"a user has only {int(eligible.min())} eligible negatives, {count} requested")
        stream = _STREAM_IDS[kind]
        race_keys = masking.stream_keys(self.seed, user_indices, stream, _RACE_STREAM)
        draw_keys = masking.stream_keys(self.seed, user_indices, stream, _DRAW_STREAM)
        gap_keys = masking.stream_keys(self.seed, user_indices, stream, _GAP_STREAM)

        # Head: explicit race keys; an excluded item never arrives.
        head_keys = self._race_keys(kind, race_keys, head)
        head_excluded = np.isin(np.arange(targets.size)[:, None] * vocab + head[None, :], excluded)
        head_keys[head_excluded] = np.inf

        # Tail: accepted draws in order (rejecting excluded and repeated items), with their arrival times.
        is_tail = np.ones(vocab, dtype=bool)
        is_tail[head] = False
        excluded_tail = is_tail[items] & (weights[items] > 0)
        allowed_tail_weight = self._tail_weight[kind] - np.bincount(
            rows[excluded_tail], weights=weights[items[excluded_tail]], minlength=targets.size)
        allowed_tail_count = tail.size - np.bincount(rows[excluded_tail], minlength=targets.size)
        needed = np.minimum(count, allowed_tail_count)
        tail_items = np.zeros((targets.size, count), dtype=np.int64)
        have = np.zeros(targets.size, dtype=np.int64)
        active = np.flatnonzero(have < needed)
        drawn = 0
        budget = max(_MAX_DRAWS, 4 * count)
        while active.size and drawn < budget:
            width = min(2 * count + 32, budget - drawn)  # most users finish in one round
            counters = np.arange(drawn, drawn + width, dtype=np.int64)
            uniforms = masking.uniform_from_bits(masking.stream_output(draw_keys[active][:, None], counters))
            draws = tail[np.searchsorted(tail_cdf, uniforms, side="right")]
            pairs = active[:, None] * vocab + draws
            found = np.minimum(np.searchsorted(excluded, pairs), excluded.size - 1)
            allowed = excluded[found] != pairs
            # Only a pair's first occurrence in this round may be accepted.
            by_value = np.argsort(draws, axis=1, kind="stable")
            sorted_draws = np.take_along_axis(draws, by_value, axis=1)
            repeated = np.zeros(draws.shape, dtype=bool)
            repeated[:, 1:] = sorted_draws[:, 1:] == sorted_draws[:, :-1]
            np.put_along_axis(allowed, by_value, np.take_along_axis(allowed, by_value, axis=1) & ~repeated, axis=1)
            order = np.cumsum(allowed, axis=1)
            take = allowed & (order <= (needed - have)[active][:, None])
            row, column = np.nonzero(take)  # row-major: each row's accepted draws in draw order
            tail_items[active[row], have[active][row] + order[row, column] - 1] = draws[row, column]
            have[active] += take.sum(axis=1)
            # Both runs sorted: the stable sort (timsort) merges them in linear time.
            excluded = np.sort(np.concatenate([excluded, np.sort(pairs[take])]), kind="stable")
            active = active[have[active] < needed[active]]
            drawn += width
        for row in active.tolist():  # the excluded items hold most of the tail: race over the tail left
            allowed = is_tail & (weights > 0)
            begin, end = np.searchsorted(excluded, [row * vocab, (row + 1) * vocab])
            allowed[excluded[begin:end] - row * vocab] = False  # history, target and accepted draws
            ids = np.flatnonzero(allowed)
            race = self._race_keys(kind, race_keys[row:row + 1], ids)[0]
            tail_items[row, have[row]:needed[row]] = ids[np.argsort(race, kind="stable")[:needed[row] - have[row]]]
            have[row] = needed[row]
        # Arrival times of a race among the allowed tail items: memoryless gaps Exp(1) / (weight left).
        taken = np.arange(count)[None, :] < have[:, None]
        taken_weight = np.where(taken, weights[tail_items], 0.0)
        weight_left = allowed_tail_weight[:, None] - (np.cumsum(taken_weight, axis=1) - taken_weight)
        gaps = -np.log1p(-masking.uniform_from_bits(
            masking.stream_output(gap_keys[:, None], np.arange(count)[None, :])))
        with np.errstate(divide="ignore", invalid="ignore"):
            arrivals = np.where(taken, np.cumsum(np.where(taken, gaps / np.maximum(weight_left, 1e-300), 0.0),
                                                 axis=1), np.inf)

        keys = np.concatenate([head_keys, arrivals], axis=1)
        candidates = np.concatenate([np.broadcast_to(head, (targets.size, head.size)), tail_items], axis=1)
        smallest = np.argpartition(keys, count - 1, axis=1)[:, :count]
        order = np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1, kind="stable")
        negatives = np.take_along_axis(candidates, np.take_along_axis(smallest, order, axis=1), axis=1)
        return negatives.astype(np.int64)

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


@dataclasses.dataclass
class CandidateBatch:
    """What one batch of users is scored on: `columns` int64 [batch, C] ids whose scores are needed:
    the target in column 0, each sampled protocol's target + negatives at `slices[protocol]`, then the
    excluded history items of full ranking at `history_slice`, valid where `history_valid`."""

    user_indices: np.ndarray
    targets: np.ndarray
    columns: np.ndarray
    slices: dict
    history_slice: slice
    history_valid: np.ndarray


def score_candidates(logits, columns, targets, item_mask) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference of the scoring that `bert4rec.experiment` runs in TensorFlow next to the logits.

    logits float [batch, >= vocab]; columns int64 [batch, C]; targets int64 [batch]; item_mask bool
    [vocab]. Returns (float32 [batch, C] scores at `columns`, int64 [batch] count of real items whose
    score is >= the target's, the target included); NaN scores count as -inf.
    """
    logits = np.asarray(logits, dtype=np.float32)[:, :item_mask.size]
    logits = np.where(np.isnan(logits), np.float32(-np.inf), logits)
    target_scores = np.take_along_axis(logits, np.asarray(targets, np.int64)[:, None], axis=1)
    at_least = ((logits >= target_scores) & item_mask).sum(axis=1)
    return np.take_along_axis(logits, columns, axis=1), at_least.astype(np.int64)


class RankingEvaluator:
    """Accumulates target ranks per protocol, batch by batch.

    Two ways in: `update(user_indices, targets, logits)` with full-vocabulary logits (numpy), or
    `prepare(user_indices, targets)` -> CandidateBatch, score its columns next to the model (one
    forward pass serves every protocol), then `add_scores(batch, scores, at_least)`.

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

    def prepare(self, user_indices, targets) -> CandidateBatch:
        """Draws every sampled protocol's candidates for a batch of users (numpy, no model)."""
        user_indices = np.asarray(user_indices, dtype=np.int64).reshape(-1)
        targets = self.sampler._check_targets(targets)
        if user_indices.size != targets.size:
            raise ValueError(f"{user_indices.size} user indices for {targets.size} targets")
        histories = self._excluded_histories(user_indices)
        parts, slices, width = [targets[:, None]], {}, 1  # column 0: the target, for full ranking
        for protocol in self.protocols:
            if parse_protocol(protocol, self.sampler.num_negatives)[0] != FULL:
                part = self.sampler.candidates_batch(protocol, user_indices, targets, histories)
                slices[protocol] = slice(width, width + part.shape[1])
                parts.append(part)
                width += part.shape[1]
        if FULL in self.protocols:
            history_columns, history_valid = self.sampler.excluded_history_columns(targets, histories)
        else:
            history_columns = np.zeros((targets.size, 0), dtype=np.int64)
            history_valid = np.zeros((targets.size, 0), dtype=bool)
        parts.append(history_columns)
        return CandidateBatch(user_indices, targets, np.concatenate(parts, axis=1), slices,
                              slice(width, width + history_columns.shape[1]), history_valid)

    def add_scores(self, batch: CandidateBatch, scores, at_least=None) -> None:
        """Adds a prepared batch: scores [batch, C] at `batch.columns`; at_least [batch] as returned by
        `score_candidates` (needed for "full")."""
        scores = np.asarray(scores)
        if scores.shape != batch.columns.shape:
            raise ValueError(f"expected scores {batch.columns.shape}, got {scores.shape}")
        for protocol in self.protocols:
            if protocol in batch.slices:
                ranks = metrics.target_ranks(scores[:, batch.slices[protocol]], 0)
            else:
                if at_least is None:
                    raise ValueError("'full' needs the at_least counts")
                # Ties against the target: every other real item scoring >= the target, less the
                # excluded history items among them.
                scores64 = np.where(np.isnan(scores), -np.inf, scores)
                target_scores = scores64[:, :1]
                history = scores64[:, batch.history_slice]
                beaten_by_history = ((history >= target_scores) & batch.history_valid).sum(axis=1)
                # A NaN or -inf target (NaN counts as -inf) ties with every item.
                at_least = np.where(target_scores[:, 0] > -np.inf, np.asarray(at_least, dtype=np.int64),
                                    int(self.sampler.item_mask.sum()))
                ranks = at_least - 1 - beaten_by_history
            self._ranks[protocol].append(ranks.astype(np.int64))

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
        batch = self.prepare(user_indices, targets)
        self.add_scores(batch, *score_candidates(logits, batch.columns, batch.targets, self.sampler.item_mask))

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
