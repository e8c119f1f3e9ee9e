"""A seeded synthetic data set shaped like the BERT4Rec paper's Amazon Beauty (Table 1), for benchmarks.

The real `beauty.txt` is not shipped here. This one has the paper's sizes (40,226 users, 54,542 items,
about 0.35 M interactions, 8.8 per user on average), heavy-tailed user lengths (at least 5, as after the
paper's 5-core filter, a long lognormal tail) and long-tailed item popularity (Zipf-like), and enough
structure for a model to learn: items belong to taste groups, each user draws most items from one
group, and a user's items come in chains (an item is often followed by its successor in the group).
"""

from __future__ import annotations

import numpy as np

BEAUTY_USERS, BEAUTY_ITEMS, BEAUTY_INTERACTIONS = 40_226, 54_542, 353_962


def beauty_like(num_users: int = BEAUTY_USERS, num_items: int = BEAUTY_ITEMS,
                interactions: int = BEAUTY_INTERACTIONS, num_groups: int = 500, in_group: float = 0.75,
                chain: float = 0.3, popularity_exponent: float = 0.9, seed: int = 0):
    """(users int64 [N], items int64 [N]) in time order per user, users 1..num_users, items 1..num_items.

    Every item occurs at least once; every user has at least 5 items; N is `interactions` when the
    lengths allow it (users' lengths are a lognormal draw rescaled to that total).
    """
    rng = np.random.default_rng(seed)
    if interactions < 5 * num_users or num_items < num_groups:
        raise ValueError("need at least 5 interactions per user and one item per group")
    extra = np.floor(rng.lognormal(mean=0.0, sigma=1.25, size=num_users))
    extra = np.floor(extra * (interactions - 5 * num_users) / extra.sum()).astype(np.int64)
    lengths = 5 + extra
    lengths[: interactions - lengths.sum()] += 1  # the rounding remainder, one item each
    popularity = (np.arange(num_items) + 20.0) ** -popularity_exponent
    popularity = popularity[rng.permutation(num_items)]  # popularity rank independent of the item id
    group_of_item = rng.integers(0, num_groups, num_items)
    group_of_user = rng.integers(0, num_groups, num_users)
    # Items of each group in id order; cumulative popularity inside each group and overall.
    by_group = np.argsort(group_of_item, kind="stable")
    group_start = np.searchsorted(group_of_item[by_group], np.arange(num_groups + 1))
    group_cdf = np.cumsum(popularity[by_group])
    group_base = np.concatenate([[0.0], group_cdf])[group_start]
    global_cdf = np.cumsum(popularity) / popularity.sum()

    total = int(lengths.sum())
    user_of = np.repeat(np.arange(num_users), lengths)
    group = group_of_user[user_of]
    low, high = group_base[group], group_base[group + 1]
    in_group_items = by_group[np.minimum(np.searchsorted(group_cdf, low + rng.random(total) * (high - low),
                                                         side="right"), group_start[group + 1] - 1)]
    global_items = np.minimum(np.searchsorted(global_cdf, rng.random(total), side="right"), num_items - 1)
    items = np.where(rng.random(total) < in_group, in_group_items, global_items)
    # Chains: with probability `chain` an item is followed by the next item of its group.
    position_in_group = np.empty(num_items, dtype=np.int64)
    position_in_group[by_group] = np.arange(num_items) - group_start[group_of_item[by_group]]
    first_of_user = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    follows = rng.random(total) < chain
    follows[first_of_user] = False
    for index in np.flatnonzero(follows):  # sequential by nature; ~30% of ~0.35 M positions
        previous = items[index - 1]
        start, stop = group_start[group_of_item[previous]], group_start[group_of_item[previous] + 1]
        items[index] = by_group[start + (position_in_group[previous] + 1) % (stop - start)]
    # Every item at least once: the missing ones replace repeated occurrences at out-of-group positions.
    missing = np.setdiff1d(np.arange(num_items), items)
    repeated = np.ones(total, dtype=bool)
    repeated[np.unique(items, return_index=True)[1]] = False
    free = np.flatnonzero(repeated & ~follows & (group_of_item[items] != group))
    if free.size < missing.size:
        raise ValueError(f"{interactions} interactions are too few to cover {num_items} items")
    items[rng.choice(free, size=missing.size, replace=False)] = missing
    return user_of + 1, items + 1


def write_user_item_file(path: str, users: np.ndarray, items: np.ndarray) -> None:
    """`user item` lines, the original repository's data format."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{user} {item}\n" for user, item in zip(users.tolist(), items.tolist())))
