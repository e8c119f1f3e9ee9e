import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from common.distribute import get_strategy
from common.optimization import create_optimizer, set_mixed_precision
from common.training import (BestCheckpoint, Callback, EarlyStopping, Trainer, TrainSettings,
                             bert_pretraining_loss_fn, checkpoint_step, classification_loss_fn, evaluate,
                             flatten_results, replica_loss, skip_consumed_batches, split_loss_output)

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
                schedule_steps=None, clip_norm=1.0, make_eval_fn=None, dataset_fn=None, callbacks=(),
                **settings):
    """Trains the tiny pretrainer through a Trainer; `settings` are TrainSettings fields."""
    with strategy.scope():
        model = tiny.tiny_pretrainer(seed=seed)
        if initial_weights is not None:
            model.set_weights(initial_weights)
        optimizer = create_optimizer(1e-2, schedule_steps or num_train_steps or 10, num_warmup_steps=1,
                                     clip_norm=clip_norm)
    settings.setdefault("progress", False)
    if "num_epochs" not in settings:
        settings["num_train_steps"] = num_train_steps
    trainer = Trainer(strategy, model, optimizer, bert_pretraining_loss_fn,
                      TrainSettings(model_dir=str(model_dir), **settings),
                      eval_fn=make_eval_fn(model) if make_eval_fn is not None else None, callbacks=callbacks)
    result = trainer.fit(dataset_fn or skip_consumed_batches(tiny.tiny_dataset_fn(examples, GLOBAL_BATCH)))
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


def test_dataset_that_runs_out_is_a_clear_error(tmp_path):
    examples = tiny.tiny_examples(GLOBAL_BATCH, GLOBAL_BATCH)
    with tf.distribute.get_strategy().scope():
        model = tiny.tiny_pretrainer()
        optimizer = create_optimizer(1e-2, 3, 0)

    def one_batch_fn(input_context, start_step):
        return tf.data.Dataset.from_tensor_slices(examples).batch(GLOBAL_BATCH)

    trainer = Trainer(tf.distribute.get_strategy(), model, optimizer, bert_pretraining_loss_fn,
                      TrainSettings(model_dir=str(tmp_path), num_train_steps=3, progress=False, summary=False))
    with pytest.raises(ValueError, match="ran out at step 1 of 3"):
        trainer.fit(one_batch_fn)


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


@pytest.mark.slow
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
                 "--output", str(tmp_path / f"worker{index}.json"), "--num_train_steps", "6",
                 "--eval_every_steps", "3"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 400  # a loaded 2-core machine takes about 3 minutes
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
    # Both workers evaluated collectively at steps 3 and 6 and got the exact global numbers (the last
    # batch is partial) that the final model gives in one process; both kept the same best step.
    for report in reports:
        assert [record["step"] for record in report["eval_history"]] == [3, 6]
        last = flatten_results(report["eval_history"][-1])
        for name, value in report["reference_eval"].items():
            assert last[name] == pytest.approx(value, abs=1e-5), name
    for mine, theirs in zip(chief["eval_history"], other["eval_history"]):
        assert flatten_results(mine) == pytest.approx(flatten_results(theirs), abs=1e-6)
    best_step = chief["best_step"]
    assert best_step in (3, 6) and other["best_step"] == best_step
    # Only the chief wrote into model_dir: its checkpoints, summaries and evaluations, no worker temp dirs.
    assert sorted(os.listdir(model_dir)) == sorted(
        ["checkpoint", "train", "eval", "eval_history.json", "best"]
        + [f"ckpt-{s}.{ext}" for s in (2, 4, 6) for ext in ("index", "data-00000-of-00001")])
    assert sorted(os.listdir(model_dir / "best")) == [
        "best.json", "checkpoint", f"ckpt-{best_step}.data-00000-of-00001", f"ckpt-{best_step}.index"]
    assert [r["step"] for r in json.loads((model_dir / "eval_history.json").read_text())] == [3, 6]


def _event_tags(directory):
    tags = set()
    for event_file in tf.io.gfile.glob(str(directory / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(value.tag for value in event.summary.value)
    return tags


def _planted_eval(scores, calls, snapshots):
    """An eval_fn factory returning planted (nested) scores by step and recording the weights it saw."""
    def make_eval_fn(model):
        def eval_fn(step):
            calls.append(step)
            snapshots[step] = _weights(model)
            return {"score": scores[step], "more": {"doubled": np.float32(2 * scores[step])}}
        return eval_fn
    return make_eval_fn


def _restored_weights(directory):
    restored = tiny.tiny_pretrainer(seed=99)
    tf.train.Checkpoint(model=restored).restore(tf.train.latest_checkpoint(str(directory))).expect_partial()
    return _weights(restored)


def test_periodic_evaluation_keeps_history_and_several_best_weights_across_a_resume(tmp_path, caplog):
    examples = tiny.tiny_examples(2 * GLOBAL_BATCH, GLOBAL_BATCH)
    model_dir = tmp_path / "model"
    caplog.set_level(logging.INFO, logger="absl")
    calls, snapshots = [], {}
    scores = {2: 0.5, 4: 0.9, 5: 0.7, 6: 0.1, 7: 0.2}

    def bests():
        # Two at once, as bert_dml's classifier keeps best-by-UAR and best-by-loss.
        return [BestCheckpoint("score", "max"), BestCheckpoint("more/doubled", "min", directory="best_low")]

    _, first = _train_tiny(get_strategy("default"), model_dir, 5, examples, schedule_steps=10,
                           make_eval_fn=_planted_eval(scores, calls, snapshots), eval_every_steps=2,
                           callbacks=bests(), save_checkpoints_steps=2, steps_per_execution=3)
    # Every 2 steps and once at the end; chunks of 3 steps still stop at each evaluation.
    assert calls == [2, 4, 5]
    expected = [{"step": s, "score": scores[s], "more": {"doubled": pytest.approx(2 * scores[s])}}
                for s in (2, 4, 5)]
    assert first.eval_history == expected
    assert json.loads((model_dir / "eval_history.json").read_text()) == expected
    assert first.best["best"]["step"] == 4 and first.best["best"]["value"] == 0.9 and not first.stopped_early
    assert first.best["best_low"]["step"] == 2 and first.best["best_low"]["value"] == pytest.approx(1.0)
    best_info = json.loads((model_dir / "best" / "best.json").read_text())
    assert best_info["step"] == 4 and best_info["metric"] == "score" and best_info["value"] == 0.9
    assert best_info["record"] == expected[1]
    assert json.loads((model_dir / "best_low" / "best.json").read_text())["step"] == 2
    assert {"score", "more/doubled"} <= _event_tags(model_dir / "eval")
    messages = [r.getMessage() for r in caplog.records]
    assert "eval step 4/5 score 0.9000 more/doubled 1.8000" in messages
    assert any(m.startswith("new best score 0.9 at step 4") for m in messages), messages

    # Each best directory holds the weights evaluated at its step, not the final ones.
    _assert_weights_close(_restored_weights(model_dir / "best"), snapshots[4], atol=0)
    _assert_weights_close(_restored_weights(model_dir / "best_low"), snapshots[2], atol=0)
    assert max(np.abs(a - b).max() for a, b in zip(snapshots[4], snapshots[5])) > 1e-4

    # Resumed to step 7: the history is loaded and appended to; no score beats step 4's, but step 6
    # has the lowest "doubled".
    calls.clear()
    _, resumed = _train_tiny(get_strategy("default"), model_dir, 7, examples, seed=3, schedule_steps=10,
                             make_eval_fn=_planted_eval(scores, calls, snapshots), eval_every_steps=2,
                             callbacks=bests(), save_checkpoints_steps=2)
    assert calls == [6, 7]
    assert [r["step"] for r in resumed.eval_history] == [2, 4, 5, 6, 7]
    assert [r["step"] for r in json.loads((model_dir / "eval_history.json").read_text())] == [2, 4, 5, 6, 7]
    assert resumed.best["best"]["step"] == 4 and resumed.best["best_low"]["step"] == 6
    assert json.loads((model_dir / "best" / "best.json").read_text())["step"] == 4
    _assert_weights_close(_restored_weights(model_dir / "best_low"), snapshots[6], atol=0)

    # Finished and evaluated at its last step: a further call neither trains nor evaluates.
    calls.clear()
    _, again = _train_tiny(get_strategy("default"), model_dir, 7, examples,
                           make_eval_fn=_planted_eval(scores, calls, snapshots), callbacks=bests())
    assert again.losses == [] and calls == [] and len(again.eval_history) == 5
    assert again.best["best"]["step"] == 4 and again.best["best_low"]["step"] == 6


def test_loss_output_forms_and_name_clashes():
    pair = (tf.constant(3.0), tf.constant(2.0))
    assert split_loss_output(pair) == ({"loss": pair}, {})
    terms, metrics = split_loss_output({"a": pair, "b": pair, "metrics": {"acc": pair}})
    assert list(terms) == ["a", "b"] and list(metrics) == ["acc"]
    for bad in ({"a": pair, "metrics": {"a": pair}}, {"loss": pair, "b": pair},
                {"metrics": {"acc": pair}}, {"a": (1.0, 2.0, 3.0)}):
        with pytest.raises(ValueError):
            split_loss_output(bad)
    # Metrics never enter the loss.
    assert float(replica_loss({"a": pair, "metrics": {"acc": (tf.constant(100.0), 1.0)}})) == 1.5


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path, caplog):
    examples = tiny.tiny_examples(GLOBAL_BATCH, GLOBAL_BATCH)
    caplog.set_level(logging.INFO, logger="absl")
    calls, snapshots = [], {}
    # Lower is better: best at step 2, then two evaluations that do not beat it.
    losses = {1: 0.6, 2: 0.4, 3: 0.45, 4: 0.4, 5: 0.1}
    kwargs = dict(make_eval_fn=_planted_eval(losses, calls, snapshots), eval_every_steps=1,
                  save_checkpoints_steps=None, steps_per_execution=3, schedule_steps=10)
    _, result = _train_tiny(get_strategy("default"), tmp_path, 10, examples,
                            callbacks=[BestCheckpoint("score", "min"), EarlyStopping("score", "min", 2)], **kwargs)
    assert calls == [1, 2, 3, 4]
    assert result.stopped_early and result.final_step == 4 and result.best["best"]["step"] == 2
    assert [step for step, _ in result.losses] == [1, 2, 3, 4]
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-4")
    assert any(r.getMessage().startswith("early stopping at step 4") for r in caplog.records)

    # Started again, the run is still stopped: no training, no evaluation.
    calls.clear()
    _, again = _train_tiny(get_strategy("default"), tmp_path, 10, examples,
                           callbacks=[EarlyStopping("score", "min", 2)], **kwargs)
    assert again.stopped_early and again.final_step == 4 and again.losses == [] and calls == []


def _planted_accuracy_examples(model, examples):
    """Labels that the untrained model gets right at known places: the first MLM target of each
    example and the first three NSP labels. Returns the examples and the accuracies of the batch."""
    outputs = model(examples, training=False)
    mlm_predictions = np.argmax(outputs["masked_lm_logits"], axis=-1)
    nsp_predictions = np.argmax(outputs["next_sentence_logits"], axis=-1)
    mlm_right = np.zeros(mlm_predictions.shape, bool)
    mlm_right[:, 0] = True
    nsp_right = np.arange(len(nsp_predictions)) < 3
    planted = dict(examples)
    planted["masked_lm_ids"] = np.where(mlm_right, mlm_predictions,
                                        (mlm_predictions + 1) % tiny.VOCAB_SIZE).astype(np.int32)
    planted["next_sentence_labels"] = np.where(nsp_right, nsp_predictions,
                                               1 - nsp_predictions)[:, None].astype(np.int32)
    weights = examples["masked_lm_weights"]
    return planted, {"masked_lm_accuracy": (weights * mlm_right).sum() / weights.sum(),
                     "next_sentence_accuracy": nsp_right.mean()}


def test_auxiliary_metrics_are_global_accuracies_and_not_part_of_the_loss(tmp_path):
    examples = tiny.tiny_examples(GLOBAL_BATCH, GLOBAL_BATCH)
    examples, expected = _planted_accuracy_examples(tiny.tiny_pretrainer(seed=0), examples)
    # Replica 0's half is right on 4 of its 12 weighted targets, replica 1's on 4 of 4: the global
    # accuracy is 8/16, the mean of the replicas' accuracies would be 2/3.
    assert expected["masked_lm_accuracy"] == 0.5 and expected["next_sentence_accuracy"] == 3 / 8
    # Two replicas: each holds one half, so the metrics are exact only if sums and counts are global.
    strategy = get_strategy("mirrored")
    # One step: its metrics come from the forward pass on the initial weights.
    _, result = _train_tiny(strategy, tmp_path, 1, examples, log_every_steps=1)
    for name, value in expected.items():
        assert result.train_metrics["metrics"][name] == pytest.approx(value, abs=1e-6), name
    # The loss is the sum of the two terms only.
    terms = result.train_metrics["terms"]
    assert terms["masked_lm"] + terms["next_sentence"] == pytest.approx(result.losses[0][1], abs=1e-5)
    assert result.train_metrics["loss"] == pytest.approx(result.losses[0][1], abs=1e-6)
    assert {"loss", "metrics/masked_lm_accuracy", "metrics/next_sentence_accuracy", "terms/masked_lm"} <= \
        _event_tags(tmp_path / "train")


def _log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.mark.parametrize("strategy_name", ["default", "mirrored"])
def test_evaluate_matches_hand_computed_losses_with_a_partial_last_batch(strategy_name):
    strategy = get_strategy(strategy_name)
    examples = tiny.tiny_examples(11, GLOBAL_BATCH, seed=4)
    with strategy.scope():
        model = tiny.tiny_pretrainer(seed=2)
    outputs = model(examples, training=False)
    mlm_log_probs = _log_softmax(outputs["masked_lm_logits"])
    nsp_log_probs = _log_softmax(outputs["next_sentence_logits"])
    ids, weights = examples["masked_lm_ids"], examples["masked_lm_weights"].astype(np.float64)
    labels = examples["next_sentence_labels"][:, 0]
    mlm_ce = -np.take_along_axis(mlm_log_probs, ids[..., None], -1)[..., 0]
    nsp_ce = -nsp_log_probs[np.arange(11), labels]
    expected = {
        "masked_lm": (mlm_ce * weights).sum() / weights.sum(),
        "next_sentence": nsp_ce.mean(),
        "masked_lm_accuracy": ((mlm_log_probs.argmax(-1) == ids) * weights).sum() / weights.sum(),
        "next_sentence_accuracy": (nsp_log_probs.argmax(-1) == labels).mean(),
    }
    expected["loss"] = expected["masked_lm"] + expected["next_sentence"]
    # Batches of 4, 4, 3 and of 5, 5, 1 (under two replicas the last one leaves a replica empty).
    for batch_size in (4, 5):
        dataset = tf.data.Dataset.from_tensor_slices(examples).batch(batch_size)
        results = evaluate(strategy, model, dataset, bert_pretraining_loss_fn)
        assert results == {
            "loss": pytest.approx(expected["loss"], abs=1e-5),
            "terms": {name: pytest.approx(expected[name], abs=1e-5) for name in ("masked_lm", "next_sentence")},
            "metrics": {name: pytest.approx(expected[name], abs=1e-5)
                        for name in ("masked_lm_accuracy", "next_sentence_accuracy")}}, batch_size
    # max_steps: the first batch only.
    first = evaluate(strategy, model, dataset, bert_pretraining_loss_fn, max_steps=1)
    assert first["terms"]["next_sentence"] == pytest.approx(nsp_ce[:5].mean(), abs=1e-5)


def test_classification_loss_is_float32_cross_entropy_with_accuracy():
    set_mixed_precision("bfloat16")
    from common.heads import BertClassifier
    encoder = tiny.tiny_pretrainer(seed=1).encoder
    model = BertClassifier(encoder, num_labels=3)
    rng = np.random.default_rng(0)
    features = {"input_ids": rng.integers(1, tiny.VOCAB_SIZE, (7, 6)).astype(np.int32),
                "label_ids": rng.integers(0, 3, 7).astype(np.int32)}
    logits = model(features, training=False)
    assert logits.dtype == "bfloat16"
    log_probs = _log_softmax(np.asarray(tf.cast(logits, tf.float32)))
    results = evaluate(tf.distribute.get_strategy(), model,
                       tf.data.Dataset.from_tensor_slices(features).batch(4), classification_loss_fn)
    assert results == {
        "loss": pytest.approx(-log_probs[np.arange(7), features["label_ids"]].mean(), abs=1e-5), "terms": {},
        "metrics": {"accuracy": pytest.approx((log_probs.argmax(-1) == features["label_ids"]).mean())}}
    terms = classification_loss_fn(model, features, False)
    assert terms["loss"][0].dtype == "float32"


def test_resume_continues_the_step_and_the_data_stream_of_an_interrupted_run(tmp_path, caplog):
    # Six distinct global batches; interrupted at step 2, a restarted dataset would replay batches
    # 0-2 where an uninterrupted run sees batches 2-4.
    examples = tiny.tiny_examples(6 * GLOBAL_BATCH, GLOBAL_BATCH)
    default = get_strategy("default")
    interrupted_dir = tmp_path / "interrupted"
    caplog.set_level(logging.INFO, logger="absl")
    kwargs = dict(schedule_steps=5, save_checkpoints_steps=2, log_every_steps=2)
    straight_model, straight = _train_tiny(default, tmp_path / "straight", 5, examples,
                                           steps_per_execution=3, **kwargs)
    straight_losses = [loss for _, loss in straight.losses]
    assert abs(straight_losses[2] - straight_losses[0]) > 1e-3  # replaying would show

    _, first = _train_tiny(default, interrupted_dir, 2, examples, **kwargs)
    assert first.final_step == 2 and [s for s, _ in first.losses] == [1, 2]
    assert tf.train.get_checkpoint_state(str(interrupted_dir)).all_model_checkpoint_paths == [
        str(interrupted_dir / "ckpt-2")]
    shutil.copytree(interrupted_dir, tmp_path / "start_step")

    # A fresh model with different initial weights: everything comes from the checkpoint, and a plain
    # dataset_fn is skipped by the batches the first 2 steps consumed.
    resumed_model, resumed = _train_tiny(default, interrupted_dir, 5, examples, seed=1, **kwargs)
    assert resumed.final_step == 5 and [s for s, _ in resumed.losses] == [3, 4, 5]
    np.testing.assert_allclose([loss for _, loss in first.losses + resumed.losses], straight_losses,
                               rtol=0, atol=1e-6)
    _assert_weights_close(_weights(resumed_model), _weights(straight_model), atol=1e-6)

    # The dataset_fn is given the explicit start step and may continue the stream itself.
    seen_start_steps = []
    plain_fn = tiny.tiny_dataset_fn(examples, GLOBAL_BATCH)

    def dataset_fn(input_context, start_step):
        seen_start_steps.append(start_step)
        return plain_fn(input_context).skip(start_step)

    _, own = _train_tiny(default, tmp_path / "start_step", 5, examples, seed=1, dataset_fn=dataset_fn,
                         summary=False, **kwargs)
    assert seen_start_steps == [2]
    np.testing.assert_allclose([loss for _, loss in own.losses], straight_losses[2:], rtol=0, atol=1e-6)

    # Nothing left to do: a third call restores step 5 and returns at once.
    _, again = _train_tiny(default, interrupted_dir, 5, examples, seed=5)
    assert again.final_step == 5 and again.losses == []

    log_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert any(line.startswith("step 2/2 loss ") and " lr " in line and line.endswith(" steps/s")
               for line in log_lines), log_lines
    assert any(line.startswith("step 5/5 loss ") for line in log_lines), log_lines
    assert {"loss", "learning_rate", "steps_per_sec"} <= _event_tags(interrupted_dir / "train")


def test_resume_skips_one_batch_per_local_replica_and_step():
    # Two replicas on one input pipeline take two per-replica batches per step; with two pipelines
    # (workers, one replica each) each pipeline gives one batch per step.
    def dataset_fn(input_context):
        return tf.data.Dataset.range(100)

    for pipelines, expected_first in ((1, 6), (2, 3)):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=0,
                                             num_replicas_in_sync=2)
        dataset = skip_consumed_batches(dataset_fn)(context, 3)
        assert int(next(iter(dataset))) == expected_first
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    assert int(next(iter(skip_consumed_batches(dataset_fn)(context, 0)))) == 0


class _EpochRecorder(Callback):
    def __init__(self):
        self.logs = []

    def on_epoch_end(self, trainer, logs):
        self.logs.append(logs)


def test_epoch_mode_evaluates_checkpoints_and_reports_each_epoch_and_resumes_at_an_epoch(tmp_path):
    # Three epochs of two steps; the data stream is one epoch after another (dataset_fn continues it
    # from the explicit start step), so a run resumed after epoch 1 sees what a straight run saw.
    examples = tiny.tiny_examples(6 * GLOBAL_BATCH, GLOBAL_BATCH)
    default = get_strategy("default")
    plain_fn = tiny.tiny_dataset_fn(examples, GLOBAL_BATCH)
    seen_start_steps = []

    def dataset_fn(input_context, start_step):
        seen_start_steps.append(start_step)
        return plain_fn(input_context).skip(start_step)

    calls, snapshots = [], {}
    scores = {2: 0.3, 4: 0.2, 6: 0.1}
    recorder = _EpochRecorder()
    settings = dict(num_epochs=3, steps_per_epoch=2, steps_per_execution=5, schedule_steps=6)
    _, straight = _train_tiny(default, tmp_path / "straight", None, examples, dataset_fn=dataset_fn,
                              make_eval_fn=_planted_eval(scores, calls, snapshots), callbacks=[recorder],
                              max_checkpoints_to_keep=5, **settings)
    assert calls == [2, 4, 6] and straight.final_step == 6 and seen_start_steps == [0]
    assert [(logs.epoch, logs.step) for logs in recorder.logs] == [(1, 2), (2, 4), (3, 6)]
    losses = [loss for _, loss in straight.losses]
    for index, logs in enumerate(recorder.logs):
        assert logs.train["loss"] == pytest.approx(np.mean(losses[2 * index:2 * index + 2]), abs=1e-6)
        assert set(logs.train["metrics"]) == {"masked_lm_accuracy", "next_sentence_accuracy"}
        assert logs.evaluation == {"step": logs.step, "epoch": logs.epoch, "score": scores[logs.step],
                                   "more": {"doubled": pytest.approx(2 * scores[logs.step])}}
        assert logs.train_seconds > 0 and logs.elapsed_seconds >= logs.train_seconds
    # Checkpoints at every epoch end although chunks could be 5 steps long.
    assert tf.train.get_checkpoint_state(str(tmp_path / "straight")).all_model_checkpoint_paths == [
        str(tmp_path / "straight" / f"ckpt-{step}") for step in (2, 4, 6)]

    # One epoch, then the same run resumed to three: dataset_fn gets start step 2, losses continue.
    seen_start_steps.clear()
    recorder = _EpochRecorder()
    _train_tiny(default, tmp_path / "resumed", None, examples, dataset_fn=dataset_fn,
                **{**settings, "num_epochs": 1})
    _, resumed = _train_tiny(default, tmp_path / "resumed", None, examples, dataset_fn=dataset_fn, seed=4,
                             callbacks=[recorder], **settings)
    assert seen_start_steps == [0, 2]
    assert [logs.epoch for logs in recorder.logs] == [2, 3]
    np.testing.assert_allclose([loss for _, loss in resumed.losses], losses[2:], rtol=0, atol=1e-6)
    assert checkpoint_step(str(tmp_path / "resumed")) == 6 and checkpoint_step(str(tmp_path / "none")) == 0


def test_epochs_of_a_run_share_one_traced_step_function(tmp_path):
    examples = tiny.tiny_examples(2 * GLOBAL_BATCH, GLOBAL_BATCH)

    class Traces(Callback):
        counts = []

        def on_epoch_end(self, trainer, logs):
            self.counts.append(trainer._run_steps.experimental_get_tracing_count())

    _, result = _train_tiny(get_strategy("default"), tmp_path, None, examples, num_epochs=3, steps_per_epoch=2,
                            callbacks=[Traces()], summary=False)
    # Epochs are boundaries of one run, not new runs (the old per-epoch train() call retraced each time).
    assert result.final_step == 6 and len(Traces.counts) == 3 and len(set(Traces.counts)) == 1


def test_settings_name_what_is_wrong(tmp_path):
    for bad, message in ((dict(), "num_train_steps"), (dict(num_train_steps=3, num_epochs=2), "not both"),
                         (dict(num_epochs=2), "steps_per_epoch"), (dict(num_train_steps=3, log_every_steps=0),
                                                                    "log_every_steps")):
        with pytest.raises(ValueError, match=message):
            TrainSettings(model_dir=str(tmp_path), **bad).check()
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping("loss", "min", patience=0)
    with pytest.raises(ValueError, match="mode"):
        BestCheckpoint("loss", "lowest")
    with tf.distribute.get_strategy().scope():
        model = tiny.tiny_pretrainer()
        optimizer = create_optimizer(1e-2, 3, 0)
    settings = TrainSettings(model_dir=str(tmp_path), num_train_steps=3)
    with pytest.raises(ValueError, match="need an eval_fn"):
        Trainer(tf.distribute.get_strategy(), model, optimizer, bert_pretraining_loss_fn, settings,
                callbacks=[EarlyStopping("loss", "min")])
    with pytest.raises(ValueError, match="its own directory"):
        Trainer(tf.distribute.get_strategy(), model, optimizer, bert_pretraining_loss_fn, settings,
                eval_fn=lambda step: {"loss": 0.0}, callbacks=[BestCheckpoint("loss", "min"), BestCheckpoint("x")])
