import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from common.distribute import (define_strategy_flags, distribute_dataset, get_strategy, is_chief,
                               is_chief_task, strategy_from_flags)


def test_default_strategy_is_the_single_device_default():
    strategy = get_strategy("default")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert is_chief(strategy)


def test_mirrored_without_gpus_spans_every_logical_cpu():
    strategy = get_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    # tests/conftest.py splits the CPU into two logical devices.
    assert strategy.num_replicas_in_sync == len(tf.config.list_logical_devices("CPU")) == 2
    assert is_chief(strategy)
    assert get_strategy("mirrored") is strategy  # one per process: collective keys restart per instance


def test_unknown_strategy_and_missing_gpus_are_clear_errors():
    with pytest.raises(ValueError, match="unknown strategy 'horovod'.*multi_worker"):
        get_strategy("horovod")
    with pytest.raises(ValueError, match="num_gpus=4 requested but only 0 GPU"):
        get_strategy("mirrored", num_gpus=4)


def test_is_chief_task_follows_tf_conventions():
    two_workers = {"worker": ["a:1", "b:2"]}
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    assert is_chief_task(None, None, None)
    assert is_chief_task("worker", 0, two_workers)
    assert not is_chief_task("worker", 1, two_workers)
    assert is_chief_task("chief", 0, with_chief)
    assert not is_chief_task("worker", 0, with_chief)
    assert not is_chief_task("evaluator", 0, two_workers)


def test_flags_define_twice_and_build_strategy_with_mixed_precision():
    define_strategy_flags()
    define_strategy_flags()  # scripts and shared modules may both call it
    flag_values = flags.FLAGS
    try:
        flag_values(["prog", "--strategy=mirrored", "--mixed_precision=bfloat16"], known_only=True)
        strategy = strategy_from_flags(flag_values)
        assert strategy.num_replicas_in_sync == 2
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        with pytest.raises(flags.IllegalFlagValueError):
            flag_values["strategy"].parse("tpu_pod")
    finally:
        flag_values.unparse_flags()
    assert flag_values["strategy"].default == "default" and flag_values["mixed_precision"].default == "none"


def test_distribute_dataset_hands_each_replica_its_per_replica_batch():
    strategy = get_strategy("mirrored")
    contexts = []

    def dataset_fn(input_context):
        contexts.append(input_context)
        per_replica = input_context.get_per_replica_batch_size(8)
        return tf.data.Dataset.range(32).batch(per_replica)

    first = next(iter(distribute_dataset(strategy, dataset_fn)))
    assert contexts[0].num_replicas_in_sync == 2
    per_replica = [t.numpy() for t in strategy.experimental_local_results(first)]
    np.testing.assert_array_equal(np.concatenate(per_replica), np.arange(8))
    assert [len(batch) for batch in per_replica] == [4, 4]
