"""BERT4Rec evaluation: negative sampling invariants, popularity law, full ranking, end-to-end metrics."""

import json
import math

import numpy as np
import pytest

from bert4rec import evaluation
from bert4rec.evaluation import CandidateSampler, RankingEvaluator

NUM_ITEMS = 50
MASK_ID, EXTRA_ID = NUM_ITEMS + 1, NUM_ITEMS + 2  # ids after the items, as in bert4rec/data.py
NON_ITEMS = {0, MASK_ID, EXTRA_ID}


def make_counts(num_items=NUM_ITEMS, extra_ids=2):
    counts = np.zeros(num_items + 1 + extra_ids)
    counts[1:num_items + 1] = np.arange(num_items, 0, -1)  # item 1 most popular
    return counts


def make_users(num_users=30, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, NUM_ITEMS + 1, num_users)
    histories = [rng.choice(np.arange(1, NUM_ITEMS + 1), size=rng.integers(0, 15), replace=False)
                 for _ in range(num_users)]
    histories = [history[history != target] for history, target in zip(histories, targets)]
    return np.arange(num_users) * 7 + 3, targets, histories


@pytest.mark.parametrize("protocol", ["pop20", "uni20"])
def test_negatives_exclude_target_history_and_non_items_and_are_unique(protocol):
    sampler = CandidateSampler(make_counts())
    users, targets, histories = make_users()
    negatives = sampler.negatives_batch(protocol, users, targets, histories)
    assert negatives.shape == (len(users), 20)
    for row, target, history in zip(negatives, targets, histories):
        assert len(set(row.tolist())) == 20
        assert target not in row
        assert not set(row.tolist()) & set(history.tolist())
        assert not set(row.tolist()) & NON_ITEMS
    candidates = sampler.candidates_batch(protocol, users, targets, histories)
    np.testing.assert_array_equal(candidates[:, 0], targets)
    np.testing.assert_array_equal(candidates[:, 1:], negatives)


@pytest.mark.parametrize("protocol", ["pop20", "uni20"])
def test_negatives_depend_only_on_seed_and_user_not_on_batching(protocol):
    users, targets, histories = make_users()
    whole = CandidateSampler(make_counts(), seed=7).negatives_batch(protocol, users, targets, histories)
    sampler = CandidateSampler(make_counts(), seed=7)
    one_by_one = np.stack([sampler.candidates(protocol, user, target, history)[1:]
                           for user, target, history in zip(users, targets, histories)])
    reverse = slice(None, None, -1)
    reversed_small_chunks = sampler.negatives_batch(
        protocol, users[reverse], targets[reverse], histories[reverse], chunk_size=4)[reverse]
    np.testing.assert_array_equal(whole, one_by_one)
    np.testing.assert_array_equal(whole, reversed_small_chunks)
    other_seed = CandidateSampler(make_counts(), seed=8).negatives_batch(protocol, users, targets, histories)
    assert not np.array_equal(np.sort(whole, axis=1), np.sort(other_seed, axis=1))


def test_pop_and_uni_use_independent_streams():
    users, targets, histories = make_users()
    sampler = CandidateSampler(np.where(make_counts() > 0, 1.0, 0.0))  # equal popularity: same law
    pop = sampler.negatives_batch("pop20", users, targets, histories)
    uni = sampler.negatives_batch("uni20", users, targets, histories)
    assert not np.array_equal(pop, uni)


def test_pop_draws_follow_successive_sampling_without_replacement():
    # Items 1, 2, 3 with weights 1, 2, 3; target 4 (weight 0 is not allowed, so give it a count).
    counts = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 0.0])
    sampler = CandidateSampler(counts)
    num_users = 4000
    negatives = sampler.negatives_batch("pop2", np.arange(num_users), np.full(num_users, 4))
    pairs = {frozenset(row.tolist()) for row in negatives}
    assert pairs <= {frozenset({1, 2}), frozenset({1, 3}), frozenset({2, 3})}
    frequency = {pair: np.mean([frozenset(row.tolist()) == pair for row in negatives]) for pair in pairs}
    # np.random.choice(replace=False, p) law: P({a,b}) = w_a/W * w_b/(W-w_a) + w_b/W * w_a/(W-w_b), W = 6.
    assert frequency[frozenset({1, 2})] == pytest.approx(1 / 6 * 2 / 5 + 2 / 6 * 1 / 4, abs=0.03)
    assert frequency[frozenset({1, 3})] == pytest.approx(1 / 6 * 3 / 5 + 3 / 6 * 1 / 3, abs=0.03)
    assert frequency[frozenset({2, 3})] == pytest.approx(2 / 6 * 3 / 4 + 3 / 6 * 2 / 3, abs=0.03)


def test_pop_frequency_follows_popularity_and_uni_does_not():
    counts = np.zeros(42)
    counts[1:41] = np.repeat([40.0, 10.0, 3.0, 1.0], 10)  # four popularity tiers of ten items
    sampler = CandidateSampler(counts)
    num_users = 2000
    targets = np.full(num_users, 40)
    tiers = {}
    for protocol in ("pop5", "uni5"):
        drawn = np.bincount(sampler.negatives_batch(protocol, np.arange(num_users), targets).ravel(),
                            minlength=42)
        tiers[protocol] = [drawn[1 + 10 * tier: 11 + 10 * tier].sum() for tier in range(4)]
    assert tiers["pop5"][0] > tiers["pop5"][1] > tiers["pop5"][2] > tiers["pop5"][3]
    assert tiers["pop5"][0] > 0.6 * num_users * 5
    uni = np.array(tiers["uni5"]) / (num_users * 5)
    np.testing.assert_allclose(uni, [0.25, 0.25, 0.25, 9 / 39], atol=0.03)  # item 40 is the target


def test_zero_count_items_are_uniform_but_never_popularity_negatives():
    counts = make_counts()
    counts[5] = 0.0
    sampler = CandidateSampler(counts, num_items=NUM_ITEMS)
    users = np.arange(300)
    targets = np.full(300, 1)
    assert 5 not in sampler.negatives_batch("pop20", users, targets)
    assert 5 in sampler.negatives_batch("uni20", users, targets)


def test_too_few_eligible_negatives_is_an_error():
    sampler = CandidateSampler(make_counts(num_items=10))
    with pytest.raises(ValueError):
        sampler.negatives_batch("uni5", [0], [1], [np.arange(2, 8)])  # only 3 items left


def brute_force_full_ranks(logits, targets, histories):
    ranks = []
    for row, target, history in zip(logits, targets, histories):
        others = [item for item in range(1, NUM_ITEMS + 1) if item != target and item not in set(history)]
        ranks.append(sum(row[item] >= row[target] for item in others))
    return np.array(ranks)


def test_full_ranks_equal_brute_force_numpy_ranks():
    users, targets, histories = make_users()
    rng = np.random.default_rng(1)
    logits = np.round(rng.normal(size=(len(users), NUM_ITEMS + 3)), 1)  # rounding creates ties
    logits[:, sorted(NON_ITEMS)] = 100.0  # non-items must never count against the target
    evaluator = RankingEvaluator(CandidateSampler(make_counts()), ("full",),
                                 histories=dict(zip(users.tolist(), histories)))
    evaluator.update(users, targets, logits)
    expected = brute_force_full_ranks(logits, targets, histories)
    np.testing.assert_array_equal(evaluator.ranks("full"), expected)


def test_no_histories_lets_history_items_compete():
    sampler = CandidateSampler(make_counts())
    history = np.arange(1, 31)  # items 1..30 watched; target 40
    logits = np.zeros((1, NUM_ITEMS + 3))
    logits[0, history] = 5.0  # every history item beats the target
    logits[0, 40] = 1.0
    results = {}
    for exclude in (True, False):
        evaluator = RankingEvaluator(sampler, ("pop19", "full"), histories={0: history} if exclude else None)
        evaluator.update([0], [40], logits)
        results[exclude] = {protocol: int(evaluator.ranks(protocol)[0]) for protocol in ("pop19", "full")}
    assert results[True] == {"pop19": 0, "full": 0}
    assert results[False]["full"] == 30
    # Without exclusion the popular history items 1..30 dominate the popularity draw.
    assert results[False]["pop19"] > 0
    negatives = sampler.negatives_batch("pop19", [0], [40], None)[0]
    assert set(negatives.tolist()) & set(history.tolist())


def test_history_window_excludes_only_the_most_recent_items():
    sampler = CandidateSampler(make_counts())
    history = [3, 4, 5, 6]  # oldest first
    logits = np.zeros((1, NUM_ITEMS + 3))
    logits[0, history] = 5.0
    logits[0, 10] = 1.0
    evaluator = RankingEvaluator(sampler, ("full",), histories={0: history}, history_window=2)
    evaluator.update([0], [10], logits)
    assert evaluator.ranks("full")[0] == 2  # items 3 and 4 are older than the window and compete


def hand_made_batch():
    """Items 1..6, [MASK] = 7; one history item each, so 4 negatives are all remaining items."""
    logits = np.array([
        # pad  1    2    3    4    5    6   mask
        [9.0, 5.0, 8.0, 1.0, 2.0, 3.0, 4.0, 9.0],  # target 1, history 2 (excluded) -> rank 0
        [9.0, 5.0, 2.0, 2.0, 10., 0.0, 1.0, 9.0],  # target 3, history 4; 5 > 2 and a tie -> rank 2
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # target 6, history 1; constant model -> rank 4
    ])
    return np.array([0, 1, 2]), np.array([1, 3, 6]), logits, {0: [2], 1: [4], 2: [1]}


def test_ranking_evaluator_end_to_end_hand_computed():
    users, targets, logits, histories = hand_made_batch()
    counts = np.array([0.0, 6, 5, 4, 3, 2, 1, 0])
    evaluator = RankingEvaluator(CandidateSampler(counts), ("pop4", "uni4", "full"), histories=histories)
    evaluator.update(users[:2], targets[:2], logits[:2])  # streamed in two batches
    evaluator.update(users[2:], targets[2:], logits[2:])
    expected = {
        "ndcg@1": 1 / 3, "hit@1": 1 / 3,
        "ndcg@5": (1 + 1 / 2 + 1 / math.log2(6)) / 3, "hit@5": 1.0,
        "ndcg@10": (1 + 1 / 2 + 1 / math.log2(6)) / 3, "hit@10": 1.0,
        "ap": (1 + 1 / 3 + 1 / 5) / 3, "valid_user": 3,
    }
    results = evaluator.result()
    for protocol in ("pop4", "uni4", "full"):
        np.testing.assert_array_equal(evaluator.ranks(protocol), [0, 2, 4])
        assert results[protocol] == pytest.approx(expected)
    one_shot = evaluation.evaluate_logits(counts, users, targets, logits, histories, protocols=("uni4",))
    assert one_shot["uni4"] == pytest.approx(expected)


def test_format_original_line_matches_hand_written_string():
    result = {"ndcg@1": 0.5, "hit@1": 0.5, "ndcg@5": 0.75, "hit@5": 1.0, "ndcg@10": 0.75, "hit@10": 1.0,
              "ap": 0.625, "valid_user": 4}
    assert evaluation.format_original_line(result) == (
        "ndcg@1:0.5, hit@1:0.5, ndcg@5:0.75, hit@5:1.0, ndcg@10:0.75, hit@10:1.0, ap:0.625, valid_user:4.0")


def test_write_eval_results_round_trips(tmp_path):
    users, targets, logits, histories = hand_made_batch()
    results = evaluation.evaluate_logits(np.array([0.0, 6, 5, 4, 3, 2, 1, 0]), users, targets, logits,
                                         histories, protocols=("full",))
    results["empty"] = evaluation.metrics.ranking_metrics([])
    path = tmp_path / "out" / "eval.json"
    evaluation.write_eval_results(path, results, extra={"step": 12})
    saved = json.loads(path.read_text())
    assert saved["step"] == 12
    assert saved["metrics"]["full"]["hit@1"] == pytest.approx(1 / 3)
    assert saved["metrics"]["empty"]["hit@1"] is None  # NaN stored as null
    assert saved["lines"]["full"] == evaluation.format_original_line(results["full"])
    with pytest.raises(ValueError):
        evaluation.write_eval_results(path, results, extra={"metrics": 1})


def successive_sampling_law(weights: dict, count: int) -> dict:
    """Exact probability of each ordered draw of `count` items without replacement, proportional to weight."""
    law = {(): 1.0}
    for _ in range(count):
        grown = {}
        for prefix, probability in law.items():
            left = {item: weight for item, weight in weights.items() if item not in prefix}
            total = sum(left.values())
            for item, weight in left.items():
                grown[prefix + (item,)] = probability * weight / total
        law = grown
    return law


@pytest.mark.parametrize("head_items, max_draws", [(0, 1024), (2, 1024), (2, 0), (100, 1024)])
def test_pop_negatives_follow_the_exact_ordered_law_in_every_sampling_path(monkeypatch, head_items, max_draws):
    # Head race + tail rejection (2), rejection only (0), race only (100) and the race fallback (max_draws 0:
    # users whose history holds most of the tail fall back) must all give successive sampling's law.
    monkeypatch.setattr(evaluation, "_HEAD_ITEMS", head_items)
    monkeypatch.setattr(evaluation, "_MAX_DRAWS", max_draws)
    counts = np.array([0.0, 6, 5, 4, 3, 2, 1, 1, 0])  # items 1..7; id 8 stands for [MASK]
    sampler = CandidateSampler(counts, num_items=7)
    num_users = 12000
    history = [4, 5]  # excluded besides the target 7
    negatives = sampler.negatives_batch("pop3", np.arange(num_users), np.full(num_users, 7),
                                        [history] * num_users)
    law = successive_sampling_law({item: counts[item] for item in (1, 2, 3, 6)}, 3)
    observed = {}
    for row in map(tuple, negatives.tolist()):
        observed[row] = observed.get(row, 0) + 1
    assert set(observed) <= set(law)
    chi_square = sum((observed.get(key, 0) - num_users * p) ** 2 / (num_users * p) for key, p in law.items())
    assert chi_square < 60  # 23 degrees of freedom: the 0.999 quantile is 49.7


def test_uniform_negatives_are_uniform_over_allowed_items_in_draw_order():
    counts = make_counts(num_items=8)
    sampler = CandidateSampler(counts, num_items=8)
    num_users = 6000
    negatives = sampler.negatives_batch("uni2", np.arange(num_users), np.full(num_users, 1), [[2, 3]] * num_users)
    first = np.bincount(negatives[:, 0], minlength=9)[4:]
    pairs = np.bincount(negatives[:, 0] * 9 + negatives[:, 1], minlength=81)
    np.testing.assert_allclose(first / num_users, np.full(5, 1 / 5), atol=0.02)
    allowed_pairs = [a * 9 + b for a in range(4, 9) for b in range(4, 9) if a != b]
    assert pairs[allowed_pairs].sum() == num_users
    np.testing.assert_allclose(pairs[allowed_pairs] / num_users, np.full(20, 1 / 20), atol=0.012)


def test_fewer_negatives_are_a_prefix_of_more():
    users, targets, histories = make_users()
    sampler = CandidateSampler(make_counts())
    np.testing.assert_array_equal(sampler.negatives_batch("pop10", users, targets, histories),
                                  sampler.negatives_batch("pop20", users, targets, histories)[:, :10])


def test_prepared_scores_give_the_same_ranks_as_full_logits():
    users, targets, histories = make_users()
    rng = np.random.default_rng(3)
    logits = np.round(rng.normal(size=(len(users), NUM_ITEMS + 3)), 1).astype(np.float32)
    logits[0, 5] = np.nan
    logits[1, targets[1]] = np.nan  # a NaN target ranks last
    history_map = dict(zip(users.tolist(), histories))
    sampler = CandidateSampler(make_counts())
    whole = RankingEvaluator(sampler, ("pop10", "uni10", "full"), history_map)
    whole.update(users, targets, logits)
    streamed = RankingEvaluator(sampler, ("pop10", "uni10", "full"), history_map)
    for rows in (slice(0, 7), slice(7, None)):
        batch = streamed.prepare(users[rows], targets[rows])
        streamed.add_scores(batch, *evaluation.score_candidates(logits[rows], batch.columns, batch.targets,
                                                                sampler.item_mask))
    for protocol in ("pop10", "uni10", "full"):
        np.testing.assert_array_equal(whole.ranks(protocol), streamed.ranks(protocol))
    np.testing.assert_array_equal(whole.ranks("full"), brute_force_full_ranks(
        np.where(np.isnan(logits), -np.inf, logits), targets, histories))
    assert whole.ranks("full")[1] == NUM_ITEMS - 1 - len(set(histories[1].tolist()))
