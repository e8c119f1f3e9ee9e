"""common.parallel.OrderedPool: results in task order, bounded read-ahead, errors surface, same output in process."""

import operator

import pytest

from common import parallel

_state = {}


def _init(offset):
    _state["offset"] = offset


def _shift(value):
    if value == 13:
        raise ValueError("task 13 failed")
    return value + _state["offset"]


def test_results_come_in_task_order_with_bounded_read_ahead():
    produced = []

    def tasks():
        for value in range(12):
            produced.append(value)
            yield value

    results = []
    with parallel.OrderedPool(2, _init, (100,), in_flight_per_worker=2) as pool:
        for result in pool.map(_shift, tasks()):
            assert len(produced) <= len(results) + 1 + 4  # never more than 2 tasks per worker ahead
            results.append(result)
    assert results == [value + 100 for value in range(12)]
    with parallel.OrderedPool(1, _init, (100,), finalizer=_state.clear) as pool:
        assert list(pool.map(_shift, range(12))) == results  # in this process: the same
    assert _state == {}


def test_a_failing_task_raises_its_error():
    with pytest.raises(ValueError, match="task 13 failed"):
        with parallel.OrderedPool(2, _init, (0,)) as pool:
            list(pool.map(_shift, range(20)))


def test_task_seeds_depend_on_coordinates_only():
    state = operator.methodcaller("generate_state", 2)
    assert (state(parallel.task_seed(1, 2, 3)) == state(parallel.task_seed(1, 2, 3))).all()
    assert (state(parallel.task_seed(1, 2, 3)) != state(parallel.task_seed(1, 3, 2))).any()
