"""BERT4Rec end to end, as a user runs it: gen_data_fin -> run.py training -> evaluation -> recommend.

Users walk one fixed cycle over the items, so the next item is fully determined by the last one: a
trained model must rank the held-out item first, an untrained one stays near chance.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from bert4rec import data as bert4rec_data
from bert4rec import experiment
from bert4rec.gen_data_fin import generate
from bert4rec.recommend import recommend
from common.config import BertConfig, BertConfigError
from common.distribute import get_strategy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_ITEMS, NUM_USERS, MAX_SEQ_LENGTH, MAX_PREDICTIONS = 150, 160, 24, 6
CYCLE = np.random.default_rng(7).permutation(np.arange(1, NUM_ITEMS + 1))


def write_cycle_dataset(path):
    rng = np.random.default_rng(3)
    with open(path, "w") as handle:
        for user in range(1, NUM_USERS + 1):
            start, length = rng.integers(NUM_ITEMS), rng.integers(14, 22)
            for step in range(length):
                handle.write(f"{user} {CYCLE[(start + step) % NUM_ITEMS]}\n")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert4rec")
    data_dir = str(root / "data")
    os.makedirs(data_dir)
    write_cycle_dataset(os.path.join(data_dir, "cycle.txt"))
    summary = generate("cycle", data_dir=data_dir, output_dir=data_dir, max_seq_length=MAX_SEQ_LENGTH,
                       max_predictions_per_seq=MAX_PREDICTIONS, masked_lm_prob=0.2, dupe_factor=6,
                       prop_sliding_window=0.5, signature="-t", pool_size=1, show_progress=False)
    config_file = str(root / "bert_config.json")
    BertConfig(vocab_size=summary["vocab_size"], hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=MAX_SEQ_LENGTH, hidden_dropout_prob=0.1,
               attention_probs_dropout_prob=0.1, initializer_range=0.1).to_json_file(config_file)
    prefix = os.path.join(data_dir, "cycle-t")
    settings = experiment.RunSettings(
        bert_config_file=config_file, vocab_filename=prefix + ".vocab",
        user_history_filename=prefix + ".his", max_seq_length=MAX_SEQ_LENGTH,
        max_predictions_per_seq=MAX_PREDICTIONS)
    return {"root": root, "prefix": prefix, "settings": settings, "summary": summary,
            "model_dir": str(root / "model")}


def evaluate(model, pipeline):
    return experiment.run_evaluation(model, pipeline["settings"], pipeline["prefix"] + ".test.tfrecord",
                                     batch_size=64, progress=False)


def test_untrained_model_is_near_chance(pipeline):
    vocab = bert4rec_data.load_vocab(pipeline["settings"].vocab_filename)
    config = experiment.load_checked_config(pipeline["settings"].bert_config_file, vocab, MAX_SEQ_LENGTH)
    results = evaluate(experiment.build_model(config), pipeline)
    assert results["pop100"]["valid_user"] == NUM_USERS
    assert results["pop100"]["hit@10"] < 0.3
    assert results["full"]["hit@10"] < 0.3


@pytest.fixture(scope="module")
def trained(pipeline):
    """The model of 300 training steps in pipeline["model_dir"] (every test that needs it gets it, in any order)."""
    model, result = experiment.run_training(
        get_strategy("default"), pipeline["settings"], pipeline["prefix"] + ".train.tfrecord",
        pipeline["model_dir"], batch_size=32, num_train_steps=300, num_warmup_steps=30, learning_rate=3e-3,
        save_checkpoints_steps=100, steps_per_execution=50, shuffle_buffer=5000, progress=False)
    return model, result


@pytest.mark.slow
def test_training_learns_the_planted_order_then_resumes_and_recommends(pipeline, trained):
    strategy = get_strategy("default")
    model, result = trained
    assert result.final_step == 300
    results = evaluate(model, pipeline)
    assert results["pop100"]["hit@10"] > 0.9, results
    assert results["full"]["hit@10"] > 0.9, results

    # A second call with more steps resumes from step 300 instead of starting over.
    _, resumed = experiment.run_training(
        strategy, pipeline["settings"], pipeline["prefix"] + ".train.tfrecord", pipeline["model_dir"],
        batch_size=32, num_train_steps=320, num_warmup_steps=30, learning_rate=3e-3,
        save_checkpoints_steps=100, steps_per_execution=10, progress=False)
    assert resumed.final_step == 320 and [step for step, _ in resumed.losses][0] == 301

    # The restored checkpoint ranks the cycle's next item near the top for a history walking the cycle
    # (chance: 3 in 150). Top-3, not top-1: after 300 steps hit@1 is only about 0.5 and varies with the seed.
    restored, _ = experiment.restore_model(pipeline["model_dir"])
    vocab = bert4rec_data.load_vocab(pipeline["settings"].vocab_filename)
    history = [int(CYCLE[index % NUM_ITEMS]) for index in range(40, 52)]
    top = recommend(restored, vocab, history, MAX_SEQ_LENGTH, top_k=5)
    assert int(CYCLE[52]) in [entry.item for entry in top[:3]], top
    assert not set(entry.item for entry in top) & set(history)


@pytest.mark.slow
def test_command_line_evaluates_and_recommends(pipeline, trained):
    """run.py --do_eval on the trained directory prints the original's line per protocol."""
    settings = pipeline["settings"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(
        [sys.executable, "-m", "bert4rec.run", "--do_eval", "--progress=false",
         f"--test_input_file={pipeline['prefix']}.test.tfrecord", f"--vocab_filename={settings.vocab_filename}",
         f"--user_history_filename={settings.user_history_filename}",
         f"--bert_config_file={settings.bert_config_file}", f"--checkpointDir={pipeline['model_dir']}",
         "--signature=", f"--max_seq_length={MAX_SEQ_LENGTH}",
         f"--max_predictions_per_seq={MAX_PREDICTIONS}", "--batch_size=64"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout.splitlines()
    metric_lines = [index for index, line in enumerate(output) if line.startswith("ndcg@1:")]
    assert [output[index - 1] for index in metric_lines] == ["pop100:", "uni100:", "full:"]
    assert re.fullmatch(r"ndcg@1:[0-9.e-]+, hit@1:[0-9.e-]+, ndcg@5:[0-9.e-]+, hit@5:[0-9.e-]+, "
                        r"ndcg@10:[0-9.e-]+, hit@10:[0-9.e-]+, ap:[0-9.e-]+, valid_user:" + f"{NUM_USERS}.0",
                        output[metric_lines[0]])
    with open(os.path.join(pipeline["model_dir"], "eval_results.json")) as handle:
        saved = json.load(handle)
    assert set(saved["metrics"]) == {"pop100", "uni100", "full"}
    assert saved["metrics"]["pop100"]["hit@10"] > 0.9

    history = " ".join(str(int(CYCLE[index])) for index in range(3, 15))  # as long as the training histories
    completed = subprocess.run(
        [sys.executable, "-m", "bert4rec.recommend", f"--checkpointDir={pipeline['model_dir']}",
         f"--history={history}", "--top_k=3", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    recommendations = json.loads(completed.stdout.strip().splitlines()[-1])["recommendations"]
    assert int(CYCLE[15]) in [entry["item"] for entry in recommendations]  # top-3 (see the test above)


def test_vocab_size_mismatch_is_a_clear_error(pipeline, tmp_path):
    vocab = bert4rec_data.load_vocab(pipeline["settings"].vocab_filename)
    small = tmp_path / "bert_config.json"
    BertConfig(vocab_size=vocab.vocab_size - 1, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8, max_position_embeddings=MAX_SEQ_LENGTH).to_json_file(small)
    with pytest.raises(BertConfigError, match=rf"bert_config.json: vocab_size {vocab.vocab_size - 1}.*"
                                              rf"\"vocab_size\": {vocab.vocab_size}"):
        experiment.load_checked_config(str(small), vocab, MAX_SEQ_LENGTH)


@pytest.mark.slow
def test_command_line_trains_the_cross_attention_variant_in_bfloat16(pipeline, tmp_path):
    """run.py --do_train --do_eval as run_ml-1m.sh calls it: checkpoints, resume state, eval_results.json."""
    settings = pipeline["settings"]
    checkpoint_dir = str(tmp_path / "cross")
    completed = subprocess.run(
        [sys.executable, "-m", "bert4rec.run", "--do_train", "--do_eval", "--progress=false",
         f"--train_input_file={pipeline['prefix']}.train.tfrecord",
         f"--test_input_file={pipeline['prefix']}.test.tfrecord", f"--vocab_filename={settings.vocab_filename}",
         f"--user_history_filename={settings.user_history_filename}",
         f"--bert_config_file={settings.bert_config_file}", f"--checkpointDir={checkpoint_dir}",
         "--signature=-x", f"--max_seq_length={MAX_SEQ_LENGTH}", f"--max_predictions_per_seq={MAX_PREDICTIONS}",
         "--batch_size=16", "--num_train_steps=20", "--num_warmup_steps=2", "--learning_rate=1e-3",
         "--save_checkpoints_steps=10", "--iterations_per_loop=5", "--model=cross_attention",
         "--mixed_precision=bfloat16", "--exclude_history=false", "--eval_protocol=pop100,full",
         "--eval_every_steps=10"],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    model_dir = checkpoint_dir + "-x"
    assert {"ckpt-10.index", "ckpt-20.index", "run_config.json", "eval_results.json"} <= set(os.listdir(model_dir))
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        saved = json.load(handle)
    assert set(saved["metrics"]) == {"pop100", "full"}
    assert saved["flags"]["model"] == "cross_attention" and saved["train"]["final_step"] == 20
    with open(os.path.join(model_dir, "run_config.json")) as handle:
        assert json.load(handle)["model"] == "cross_attention"
    # --eval_every_steps: the pop100 line during training, and the history of evaluations.
    assert "pop100 at step 10:" in completed.stdout and "pop100 at step 20:" in completed.stdout
    with open(os.path.join(model_dir, "eval_history.json")) as handle:
        history = json.load(handle)
    assert [record["step"] for record in history] == [10, 20]
    assert 0.0 <= history[-1]["pop100"]["hit@10"] <= 1.0 and "ndcg@10" in history[-1]["pop100"]


@pytest.mark.slow
def test_training_runs_under_mirrored_strategy_on_two_replicas(pipeline, tmp_path):
    """The same run_training under MirroredStrategy over the two logical CPUs (the GPU code path)."""
    strategy = get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    model_dir = str(tmp_path / "mirrored")
    _, result = experiment.run_training(
        strategy, pipeline["settings"], pipeline["prefix"] + ".train.tfrecord", model_dir,
        batch_size=32, num_train_steps=40, num_warmup_steps=4, learning_rate=3e-3,
        save_checkpoints_steps=20, steps_per_execution=10, progress=False)
    losses = np.array([loss for _, loss in result.losses])
    assert result.final_step == 40 and np.all(np.isfinite(losses))
    assert losses[-10:].mean() < losses[:10].mean()
    with pytest.raises(ValueError, match="not divisible by the 2 replicas"):
        experiment.run_training(strategy, pipeline["settings"], pipeline["prefix"] + ".train.tfrecord",
                                str(tmp_path / "odd"), batch_size=33, num_train_steps=1, num_warmup_steps=0,
                                learning_rate=1e-3, progress=False)
    restored, path = experiment.restore_model(model_dir)
    assert path.endswith("ckpt-40")
