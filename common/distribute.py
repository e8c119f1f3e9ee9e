"""Distribution strategies for every package: flags, one factory, and small helpers for the training loop.

`get_strategy` takes plain arguments; scripts call `define_strategy_flags()` at import and
`strategy_from_flags(FLAGS)` in `main`, which also sets the mixed-precision policy.
"""

from __future__ import annotations

import os
from typing import Callable

import tensorflow as tf
from absl import flags, logging

from common.optimization import MIXED_PRECISION_NAMES, set_mixed_precision

STRATEGY_NAMES = ("default", "mirrored", "multi_worker", "tpu")


def _define_once(define: Callable, name: str, *args, **kwargs) -> None:
    # absl refuses to define a flag twice; scripts and tests may both call define_strategy_flags().
    if name not in flags.FLAGS:
        define(name, *args, **kwargs)


def define_strategy_flags() -> None:
    """Defines --strategy, --num_gpus, --tpu, --tpu_zone, --gcp_project, --mixed_precision (idempotent)."""
    _define_once(flags.DEFINE_enum, "strategy", "default", list(STRATEGY_NAMES),
                 "Distribution strategy: default (one device), mirrored (all local GPUs, else all "
                 "logical CPUs), multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG) or tpu.")
    _define_once(flags.DEFINE_integer, "num_gpus", 0,
                 "GPUs for --strategy=mirrored; 0 means every visible GPU, or every logical CPU "
                 "when there is no GPU.")
    _define_once(flags.DEFINE_string, "tpu", None,
                 "TPU name or grpc:// address for --strategy=tpu ('local' on a TPU VM).")
    _define_once(flags.DEFINE_string, "tpu_zone", None, "GCE zone of the TPU (optional).")
    _define_once(flags.DEFINE_string, "gcp_project", None, "GCP project of the TPU (optional).")
    _define_once(flags.DEFINE_enum, "mixed_precision", "none", list(MIXED_PRECISION_NAMES),
                 "Keras mixed-precision policy: none (float32), bfloat16 or float16 (with loss scaling).")


def _mirrored_devices(num_gpus: int) -> list[str]:
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
    if num_gpus > len(gpus):
        raise ValueError(f"num_gpus={num_gpus} requested but only {len(gpus)} GPU(s) are visible")
    if num_gpus > 0:
        return gpus[:num_gpus]
    if gpus:
        return gpus
    # No GPU: mirror over every logical CPU device (tests split the CPU in two this way).
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _tpu_strategy(tpu: str | None, tpu_zone: str | None, gcp_project: str | None):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu or "", zone=tpu_zone, project=gcp_project)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


# Every new MirroredStrategy numbers its collective ops from the same keys, so a second one in a process
# clashes with collectives the first already ran ("Shape mismatch in the collective instance");
# multi-worker and TPU set-up may only happen once per process anyway. Hence one strategy per setting.
_STRATEGIES: dict[tuple, tf.distribute.Strategy] = {}


def _cached(key: tuple, build: Callable[[], tf.distribute.Strategy]) -> tf.distribute.Strategy:
    if key not in _STRATEGIES:
        _STRATEGIES[key] = build()
    return _STRATEGIES[key]


def get_strategy(strategy: str = "default", num_gpus: int = 0, tpu: str | None = None,
                 tpu_zone: str | None = None, gcp_project: str | None = None) -> tf.distribute.Strategy:
    """Returns the named `tf.distribute.Strategy` (the same object for the same arguments within a
    process); raises ValueError for an unknown name."""
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        devices = tuple(_mirrored_devices(num_gpus))
        logging.info("MirroredStrategy over %s", devices)
        return _cached(("mirrored", devices), lambda: tf.distribute.MirroredStrategy(list(devices)))
    if strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            logging.warning("--strategy=multi_worker without TF_CONFIG: running as a single worker")
        return _cached(("multi_worker", os.environ.get("TF_CONFIG")), tf.distribute.MultiWorkerMirroredStrategy)
    if strategy == "tpu":
        return _cached(("tpu", tpu, tpu_zone, gcp_project), lambda: _tpu_strategy(tpu, tpu_zone, gcp_project))
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGY_NAMES)}")


def strategy_from_flags(flag_values=flags.FLAGS) -> tf.distribute.Strategy:
    """Applies --mixed_precision, then builds the strategy named by --strategy."""
    set_mixed_precision(flag_values.mixed_precision)
    return get_strategy(flag_values.strategy, num_gpus=flag_values.num_gpus, tpu=flag_values.tpu,
                        tpu_zone=flag_values.tpu_zone, gcp_project=flag_values.gcp_project)


def distribute_dataset(strategy: tf.distribute.Strategy,
                       dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
    """`dataset_fn(input_context)` must return a dataset batched per replica
    (`input_context.get_per_replica_batch_size(global_batch_size)`) and sharded by
    `input_context.input_pipeline_id` if each worker should read different data."""
    return strategy.distribute_datasets_from_function(dataset_fn)


def is_chief_task(task_type: str | None, task_id: int | None, cluster_spec: dict | None) -> bool:
    """TF's convention: the 'chief' task, or worker 0 when the cluster has no chief, or no cluster at all."""
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in (cluster_spec or {})


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one task that writes checkpoints, summaries and exports (always True off multi-worker)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver is None:
        return True
    return is_chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict())

