import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from common.distribute import get_strategy
from common.optimization import create_optimizer, set_mixed_precision
from common.training import bert_pretraining_loss_fn, replica_loss, train

# The worker script of the multi-worker test also holds the tiny model and data every test here uses.
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi_worker_worker.py")
_spec = importlib.util.spec_from_file_location("multi_worker_worker", WORKER_SCRIPT)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

GLOBAL_BATCH = 8


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _assert_weights_close(actual, expected, atol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=0, atol=atol)


def _train_tiny(strategy, model_dir, num_train_steps, examples, initial_weights=None, seed=0,
                schedule_steps=None, clip_norm=1.0, **train_kwargs):
    with strategy.scope():
        model = tiny.tiny_pretrainer(seed=seed)
        if initial_weights is not None:
            model.set_weights(initial_weights)
        optimizer = create_optimizer(1e-2, schedule_steps or num_train_steps, num_warmup_steps=1,
                                     clip_norm=clip_norm)
    train_kwargs.setdefault("progress", False)
    result = train(strategy, model, optimizer, tiny.tiny_dataset_fn(examples, GLOBAL_BATCH),
                   bert_pretraining_loss_fn, num_train_steps=num_train_steps, model_dir=str(model_dir),
                   **train_kwargs)
    return model, result


def _global_gradient_norm(model, features):
    with tf.GradientTape() as tape:
        loss = replica_loss(bert_pretraining_loss_fn(model, features, True))
    return float(tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables)))


def test_mirrored_matches_one_device_on_the_same_global_batch(tmp_path):
    # Two distinct global batches; in each, replica 0's half has 3 MLM targets per example and
    # replica 1's only 1, so averaging per-replica means would give a different loss.
    examples = tiny.tiny_examples(2 * GLOBAL_BATCH, GLOBAL_BATCH)
    clip_norm = 0.1
    reference = tiny.tiny_pretrainer(seed=0)
    initial_weights = _weights(reference)
    first_batch = {key: value[:GLOBAL_BATCH] for key, value in examples.items()}
    assert _global_gradient_norm(reference, first_batch) > 3 * clip_norm  # clipping is active

    single_model, single = _train_tiny(get_strategy("default"), tmp_path / "single", 4, examples,
                                       initial_weights=initial_weights, clip_norm=clip_norm)
    mirrored = get_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2
    mirrored_model, multi = _train_tiny(mirrored, tmp_path / "mirrored", 4, examples, seed=7,
                                        initial_weights=initial_weights, clip_norm=clip_norm,
                                        steps_per_execution=2)

    assert [step for step, _ in multi.losses] == [1, 2, 3, 4]
    np.testing.assert_allclose([loss for _, loss in multi.losses], [loss for _, loss in single.losses],
                               rtol=0, atol=1e-4)
    _assert_weights_close(_weights(mirrored_model), _weights(single_model), atol=1e-4)
    # Training moved the weights (warmup makes step 1 a no-op, steps 2-4 are not).
    assert max(np.abs(a - b).max() for a, b in zip(_weights(single_model), initial_weights)) > 1e-3


def test_resume_continues_from_the_checkpoint_step_and_matches_an_uninterrupted_run(tmp_path, caplog):
    # Four distinct global batches repeated: the resumed run restarts the dataset at step 4, which is
    # a whole number of periods, so it sees the batches an uninterrupted run sees at steps 5 and 6.
    examples = tiny.tiny_examples(4 * GLOBAL_BATCH, GLOBAL_BATCH)
    default = get_strategy("default")
    interrupted_dir = tmp_path / "interrupted"
    caplog.set_level(logging.INFO, logger="absl")

    _, first = _train_tiny(default, interrupted_dir, 4, examples, schedule_steps=6,
                           save_checkpoints_steps=2, log_every_steps=2)
    assert first.final_step == 4 and [s for s, _ in first.losses] == [1, 2, 3, 4]
    assert tf.train.get_checkpoint_state(str(interrupted_dir)).all_model_checkpoint_paths == [
        str(interrupted_dir / "ckpt-2"), str(interrupted_dir / "ckpt-4")]

    # A fresh model with different initial weights: everything must come from the checkpoint.
    resumed_model, resumed = _train_tiny(default, interrupted_dir, 6, examples, seed=123,
                                         save_checkpoints_steps=2, log_every_steps=2)
    assert resumed.final_step == 6
    assert [s for s, _ in resumed.losses] == [5, 6]

    straight_model, straight = _train_tiny(default, tmp_path / "straight", 6, examples,
                                           save_checkpoints_steps=2, steps_per_execution=3)
    np.testing.assert_allclose([l for _, l in first.losses + resumed.losses],
                               [l for _, l in straight.losses], rtol=0, atol=1e-6)
    _assert_weights_close(_weights(resumed_model), _weights(straight_model), atol=1e-6)

    # Nothing left to do: a third call restores step 6 and returns at once.
    _, again = _train_tiny(default, interrupted_dir, 6, examples, seed=5)
    assert again.final_step == 6 and again.losses == []

    log_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert any(line.startswith("step 2/4 loss ") and " lr " in line and line.endswith(" steps/s")
               for line in log_lines), log_lines
    assert any(line.startswith("step 6/6 loss ") for line in log_lines), log_lines
    tags = set()
    for event_file in tf.io.gfile.glob(str(interrupted_dir / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(value.tag for value in event.summary.value)
    assert {"loss", "learning_rate", "steps_per_sec"} <= tags


def test_dataset_that_runs_out_is_a_clear_error(tmp_path):
    examples = tiny.tiny_examples(GLOBAL_BATCH, GLOBAL_BATCH)
    with tf.distribute.get_strategy().scope():
        model = tiny.tiny_pretrainer()
        optimizer = create_optimizer(1e-2, 3, 0)

    def one_batch_fn(input_context):
        return tf.data.Dataset.from_tensor_slices(examples).batch(GLOBAL_BATCH)

    with pytest.raises(ValueError, match="ran out at step 1 of 3"):
        train(tf.distribute.get_strategy(), model, optimizer, one_batch_fn, bert_pretraining_loss_fn,
              num_train_steps=3, model_dir=str(tmp_path), progress=False, summary=False)


def test_bfloat16_policy_trains_with_float32_variables(tmp_path):
    set_mixed_precision("bfloat16")
    examples = tiny.tiny_examples(GLOBAL_BATCH, GLOBAL_BATCH)
    model, result = _train_tiny(get_strategy("default"), tmp_path, 2, examples, summary=False)
    assert model.encoder.dtype_policy.name == "mixed_bfloat16"
    assert model.encoder({"input_ids": examples["input_ids"][:2]})["sequence_output"].dtype == "bfloat16"
    assert {variable.dtype for variable in model.weights} == {"float32"}
    assert result.final_step == 2 and all(np.isfinite(loss) for _, loss in result.losses)


def test_float16_policy_wraps_the_optimizer_in_loss_scaling(tmp_path):
    set_mixed_precision("float16")
    examples = tiny.tiny_examples(GLOBAL_BATCH, GLOBAL_BATCH)
    _, result = _train_tiny(get_strategy("default"), tmp_path, 2, examples, summary=False)
    assert result.final_step == 2 and all(np.isfinite(loss) for _, loss in result.losses)
    saved = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(str(tmp_path)))]
    assert any("dynamic_scale" in name for name in saved), saved


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_workers_on_loopback_train_to_identical_weights(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    model_dir = tmp_path / "model"
    processes = []
    try:
        for index in range(2):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}))
            processes.append(subprocess.Popen(
                [sys.executable, WORKER_SCRIPT, "--model_dir", str(model_dir),
                 "--output", str(tmp_path / f"worker{index}.json"), "--num_train_steps", "6"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 150
        for index, process in enumerate(processes):
            _, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            assert process.returncode == 0, f"worker {index} failed:\n{stderr[-3000:]}"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    reports = [json.loads((tmp_path / f"worker{index}.json").read_text()) for index in range(2)]
    assert [r["is_chief"] for r in reports] == [True, False]
    assert all(r["num_replicas"] == 2 and r["final_step"] == 6 for r in reports)
    chief, other = reports
    assert chief["weights"].keys() == other["weights"].keys()
    for path in chief["weights"]:
        np.testing.assert_allclose(other["weights"][path], chief["weights"][path], rtol=0, atol=1e-6,
                                   err_msg=path)
    losses = [loss for _, loss in chief["losses"]]
    assert [step for step, _ in chief["losses"]] == [1, 2, 3, 4, 5, 6]
    assert losses[-1] < losses[0] - 0.2, losses
    # Only the chief wrote into model_dir: its checkpoints and summaries, no worker temp dirs.
    assert sorted(os.listdir(model_dir)) == sorted(
        ["checkpoint", "train"] + [f"ckpt-{s}.{ext}" for s in (2, 4, 6)
                                   for ext in ("index", "data-00000-of-00001")])
