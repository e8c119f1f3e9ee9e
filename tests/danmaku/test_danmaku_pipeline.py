"""Corpus -> TFRecords -> continued pre-training from a Google folder -> the four numbers -> served by the CLI."""

import glob
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from danmaku_helpers import make_model_folder

from common.checkpoints import CheckpointMismatchError
from common.cli import UserError
from common.config import BertConfig

from common.embeddings import SentenceEncoder
from danmaku.client import BertClient
from danmaku.data import create_pretraining_data
from common.model_source import load as load_model
from common.pretraining_data import pretraining_feature_spec
from danmaku.pretraining import (PretrainingSettings, _restore_model_only, build_pretrainer, check_tpu_cores,
                                  format_table, read_eval_results, run_pretraining, tpu_address,
                                  warm_start_pretrainer)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOGLE_KEYS = {"global_step", "loss", "masked_lm_accuracy", "masked_lm_loss", "next_sentence_accuracy",
               "next_sentence_loss"}
STEPS = 40


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_corpus(path, phrases, num_documents, seed):
    """Videos of repeated catch-phrases: each video favours two of them, so there is something to learn."""
    rng = random.Random(seed)
    documents = []
    for _ in range(num_documents):
        favourites = rng.sample(phrases, 2)
        documents.append("\n".join(rng.choice(favourites) if rng.random() < 0.8 else rng.choice(phrases)
                                   for _ in range(rng.randint(8, 16))))
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, corpus_lines):
    root = tmp_path_factory.mktemp("pipeline")
    vocab = os.path.join(tiny_model_dir, "vocab.txt")
    data = {}
    for name, documents, seed in (("train", 60, 1), ("eval", 12, 2)):
        corpus = write_corpus(root / f"{name}.txt", corpus_lines[:10], documents, seed)
        stats = create_pretraining_data(corpus, str(root / f"{name}.tfrecord"), vocab, num_workers=1, progress=False,
                                        max_seq_length=32, max_predictions_per_seq=5, dupe_factor=3,
                                        random_seed=seed)
        assert stats["instances"] > 0 and stats["masked_unk_share"] == 0.0
        data[name] = str(root / f"{name}.tfrecord")
    settings = PretrainingSettings(
        input_file=data["train"], eval_input_file=data["eval"], output_dir=str(root / "model"),
        init_checkpoint=tiny_model_dir, train_batch_size=16, eval_batch_size=16, max_seq_length=32,
        max_predictions_per_seq=5, num_train_steps=STEPS, num_warmup_steps=4, learning_rate=2e-3,
        save_checkpoints_steps=20, iterations_per_loop=10, max_eval_steps=10, progress=False)
    result = run_pretraining(tf.distribute.get_strategy(), settings)
    return settings, result


def _google_eval_by_hand(model, settings):
    """Google's eval metrics in NumPy over max_eval_steps x eval_batch_size records of the repeated eval files."""
    files = sorted(glob.glob(settings.eval_input_file[: -len(".tfrecord")] + "*.tfrecord"))
    count = sum(1 for _ in tf.data.TFRecordDataset(files))
    total = settings.max_eval_steps * settings.eval_batch_size
    serialized = next(iter(tf.data.TFRecordDataset(files).repeat().batch(total)))
    features = {key: tf.cast(value, tf.int32) if value.dtype == tf.int64 else value for key, value in
                tf.io.parse_example(serialized, pretraining_feature_spec(32, 5)).items()}
    outputs = model(features, training=False)
    log_p = tf.nn.log_softmax(tf.cast(outputs["masked_lm_logits"], tf.float64)).numpy()
    labels, weights = features["masked_lm_ids"].numpy(), features["masked_lm_weights"].numpy().astype(np.float64)
    picked = np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    correct = (log_p.argmax(-1) == labels).astype(np.float64)
    nsp_log_p = tf.nn.log_softmax(tf.cast(outputs["next_sentence_logits"], tf.float64)).numpy()
    nsp_labels = features["next_sentence_labels"].numpy()[:, 0]
    return {"masked_lm_loss": -(picked * weights).sum() / weights.sum(),
            "masked_lm_accuracy": (correct * weights).sum() / weights.sum(),
            "next_sentence_loss": -nsp_log_p[np.arange(total), nsp_labels].mean(),
            "next_sentence_accuracy": (nsp_log_p.argmax(-1) == nsp_labels).mean()}, count


@pytest.mark.slow
def test_pretraining_writes_the_four_numbers_in_googles_format(trained):
    settings, result = trained
    output_dir = settings.output_dir
    assert "masked-LM head, next-sentence head" in result["loaded_from"]  # cls/ tensors of the Google folder
    values = read_eval_results(os.path.join(output_dir, "eval_results.txt"))
    assert set(values) == GOOGLE_KEYS and values["global_step"] == STEPS
    assert values == pytest.approx(result["rows"]["eval"])
    rows = result["rows"]
    assert set(rows) == {"before_training", "train", "eval"}
    for row in rows.values():
        assert 0.0 <= row["masked_lm_accuracy"] <= 1.0 and 0.0 <= row["next_sentence_accuracy"] <= 1.0
    # The evaluation-data row, recomputed by hand as Google's estimator does it: the eval files in order, repeated,
    # max_eval_steps full batches; masked-LM loss and accuracy weighted by masked_lm_weights, NSP over instances.
    model, _ = build_pretrainer(tf.distribute.get_strategy(), BertConfig.from_json_file(
        os.path.join(output_dir, "bert_config.json")), settings)
    assert _restore_model_only(model, output_dir) == STEPS
    by_hand, eval_records = _google_eval_by_hand(model, settings)
    assert eval_records < settings.max_eval_steps * settings.eval_batch_size  # so the repetition matters
    for key in ("masked_lm_loss", "masked_lm_accuracy", "next_sentence_loss", "next_sentence_accuracy"):
        assert rows["eval"][key] == pytest.approx(by_hand[key], rel=1e-4, abs=1e-5), key
    # Repeated catch-phrases are easy: the masked-LM loss drops well below its start (log 57 = 4.0).
    assert rows["eval"]["masked_lm_loss"] < rows["before_training"]["masked_lm_loss"] - 0.5
    table = format_table(rows)
    assert table.splitlines()[0] == ("| | masked_lm_accuracy | masked_lm_loss | next_sentence_accuracy | "
                                     "next_sentence_loss |")
    assert "| before training (eval data) (step 0) |" in table and f"| evaluation data (step {STEPS}) |" in table
    for name in ("bert_config.json", "vocab.txt", f"ckpt-{STEPS}.index", f"model.ckpt-{STEPS}.index",
                 "eval_results.json", "run_config.json"):
        assert os.path.isfile(os.path.join(output_dir, name)), name

    # --do_eval alone restores the last checkpoint and reproduces the evaluation exactly.
    again = run_pretraining(tf.distribute.get_strategy(),
                            PretrainingSettings(**{**vars(settings), "do_train": False}))
    assert again["final_step"] == STEPS
    assert again["rows"]["eval"] == pytest.approx(rows["eval"], abs=1e-6)
    assert again["rows"]["before_training"] == pytest.approx(rows["before_training"])


@pytest.mark.slow
def test_serve_cli_loads_the_tuned_checkpoint_with_bert_as_service_flags(trained, tiny_model_dir):
    settings, _ = trained
    texts = ["前方高能", "awsl", "泪目泪目"]
    tuned = load_model(tiny_model_dir, weights=settings.output_dir, ckpt_name=f"model.ckpt-{STEPS}")
    expected = SentenceEncoder(tuned.encoder, tuned.tokenizer, layers=(-1,), max_seq_length=16).encode(texts)
    untuned = load_model(tiny_model_dir)
    before = SentenceEncoder(untuned.encoder, untuned.tokenizer, layers=(-1,), max_seq_length=16).encode(texts)
    assert np.abs(expected - before).max() > 1e-3  # the tuned weights really differ
    # Our resumable checkpoints load as tuned models too; the last one holds the same weights.
    last = load_model(tiny_model_dir, weights=settings.output_dir, ckpt_name=f"ckpt-{STEPS}")
    assert "model checkpoint" in last.weights
    np.testing.assert_array_equal(last.encoder.pooler_dense.kernel.numpy(), tuned.encoder.pooler_dense.kernel.numpy())

    port = free_port()
    # The seed's own command line, with `python -m danmaku.serve` for `bert-serving-start`.
    command = [sys.executable, "-m", "danmaku.serve", "-model_dir", tiny_model_dir,
               f"-tuned_model_dir={settings.output_dir}", f"-ckpt_name=model.ckpt-{STEPS}", "-num_worker=1",
               "-pooling_layer=-1", "-max_seq_len", "16", "-port", str(port)]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline and "ready:" not in line:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                break
        assert "ready:" in line, f"server did not start (exit {server.poll()})"
        vectors = BertClient(port=port, timeout=30000).encode(texts)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        finally:
            if server.poll() is None:
                server.kill()
    assert server.returncode == 0


def test_warm_start_loads_googles_heads_or_starts_them_fresh(tmp_path, tiny_model_dir, corpus_lines):
    config = BertConfig.from_json_file(os.path.join(tiny_model_dir, "bert_config.json"))
    settings = PretrainingSettings(input_file="unused", output_dir=str(tmp_path))
    reader = tf.train.load_checkpoint(os.path.join(tiny_model_dir, "bert_model.ckpt"))
    model, _ = build_pretrainer(tf.distribute.get_strategy(), config, settings)
    warm_start_pretrainer(tiny_model_dir, model)
    np.testing.assert_array_equal(model.next_sentence.kernel.numpy().T,
                                  reader.get_tensor("cls/seq_relationship/output_weights"))
    np.testing.assert_array_equal(model.encoder.pooler_dense.kernel.numpy(),
                                  reader.get_tensor("bert/pooler/dense/kernel"))

    encoder_only = make_model_folder(str(tmp_path / "encoder_only"), corpus_lines, seed=3, with_heads=False)
    model, _ = build_pretrainer(tf.distribute.get_strategy(), config, settings)
    head_before = model.next_sentence.kernel.numpy().copy()
    assert warm_start_pretrainer(encoder_only, model).endswith("heads: random")
    np.testing.assert_array_equal(model.next_sentence.kernel.numpy(), head_before)
    np.testing.assert_array_equal(
        model.encoder.pooler_dense.kernel.numpy(),
        tf.train.load_checkpoint(os.path.join(encoder_only, "bert_model.ckpt")).get_tensor("bert/pooler/dense/kernel"))

    wider = make_model_folder(str(tmp_path / "wider"), corpus_lines, config_overrides={"hidden_size": 64})
    with pytest.raises(CheckpointMismatchError):  # an encoder that does not fit is an error, heads or not
        warm_start_pretrainer(wider, model)


def test_run_pretraining_cli_reports_a_wrong_input_file_in_one_line(tmp_path, tiny_model_dir):
    result = subprocess.run(
        [sys.executable, "-m", "danmaku.run_pretraining", f"--input_file={tmp_path / 'missing.tfrecord'}",
         f"--output_dir={tmp_path / 'model'}", f"--init_checkpoint={tiny_model_dir}", "--do_train",
         "--max_seq_length=32", "--master=grpc://10.0.0.2:8470", "--num_tpu_cores=8"],  # Google's TPU flags parse
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --input_file: nothing matches '{tmp_path / 'missing.tfrecord'}' "
        "(nor its shards <name>-00000-of-0000N.tfrecord)")
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_settings_that_do_not_fit_the_data_fail_before_training(trained, tmp_path):
    settings, _ = trained
    not_records = tmp_path / "comments.txt"
    not_records.write_text("前方高能\n", encoding="utf-8")
    cases = {"max_seq_length": (64, "input_ids of length 32 but --max_seq_length=64"),
             "max_predictions_per_seq": (20, "masked_lm_positions of length 5 but --max_predictions_per_seq=20"),
             "input_file": (str(not_records), "not a readable TFRecord file")}
    for field, (value, message) in cases.items():
        output_dir = tmp_path / field
        wrong = PretrainingSettings(**{**vars(settings), field: value, "output_dir": str(output_dir)})
        with pytest.raises(UserError, match=message):
            run_pretraining(tf.distribute.get_strategy(), wrong)
        assert not output_dir.exists()  # nothing written before the check
    # --do_eval alone with nothing to evaluate (no checkpoint, no --init_checkpoint) is an error, not random weights.
    nothing = PretrainingSettings(**{**vars(settings), "do_train": False, "init_checkpoint": None,
                                     "bert_config_file": os.path.join(settings.output_dir, "bert_config.json"),
                                     "output_dir": str(tmp_path / "empty")})
    with pytest.raises(UserError, match="no checkpoint in .* and no --init_checkpoint"):
        run_pretraining(tf.distribute.get_strategy(), nothing)


def test_googles_tpu_flags_name_the_tpu_and_check_its_cores():
    assert tpu_address(None, None, "grpc://10.0.0.2:8470") == "grpc://10.0.0.2:8470"  # --master without --tpu_name
    assert tpu_address(None, "my-tpu", "grpc://10.0.0.2:8470") == "my-tpu"
    assert tpu_address("local", "my-tpu", None) == "local"
    check_tpu_cores(8, 8)
    check_tpu_cores(8, 2)  # fewer: reported, all cores are used
    with pytest.raises(UserError, match="--num_tpu_cores=32 but the TPU has 8 cores"):
        check_tpu_cores(8, 32)


@pytest.mark.slow
def test_the_whole_pipeline_runs_on_a_cloud_filesystem(tiny_model_dir, corpus_lines):
    """gs:// in the seed's TPU workflow; TensorFlow's in-memory ram:// here (offline): corpus, vocabulary, model,
    TFRecords, checkpoints, eval_results.txt and the served folder all live on the tf.io.gfile filesystem."""
    import uuid

    from common import io_utils

    root = f"ram://danmaku_{uuid.uuid4().hex}"
    for name in os.listdir(tiny_model_dir):  # the Google folder, uploaded
        io_utils.copy(os.path.join(tiny_model_dir, name), f"{root}/init/{name}")
    rng = random.Random(5)
    for index in range(2):  # two files: the last video of the first runs on into the second (Google's reader)
        videos = ["\n".join(rng.choice(corpus_lines[:10]) for _ in range(rng.randint(6, 12))) for _ in range(6)]
        io_utils.atomic_write_text(f"{root}/corpus/part-{index}.txt", "\n\n".join(videos) + "\n")
    stats = create_pretraining_data(f"{root}/corpus/*.txt", f"{root}/data/a.tfrecord,{root}/data/b.tfrecord",
                                    f"{root}/init/vocab.txt", num_workers=1, progress=False, max_seq_length=32,
                                    max_predictions_per_seq=5, dupe_factor=2)
    assert stats["documents"] == 11 and stats["files"] == [f"{root}/data/a.tfrecord", f"{root}/data/b.tfrecord"]
    settings = PretrainingSettings(
        input_file=f"{root}/data/*.tfrecord", output_dir=f"{root}/model", init_checkpoint=f"{root}/init",
        train_batch_size=8, eval_batch_size=8, max_seq_length=32, max_predictions_per_seq=5, num_train_steps=4,
        num_warmup_steps=1, save_checkpoints_steps=2, iterations_per_loop=2, max_eval_steps=3, progress=False)
    result = run_pretraining(tf.distribute.get_strategy(), settings)
    values = read_eval_results(f"{root}/model/eval_results.txt")
    assert values == pytest.approx(result["rows"]["eval"]) and values["global_step"] == 4
    for name in ("bert_config.json", "vocab.txt", "model.ckpt-4.index", "ckpt-4.index", "eval_results.json"):
        assert io_utils.isfile(f"{root}/model/{name}"), name
    # bert-as-service's -model_dir on the written folder: config, vocabulary and the tuned weights from there.
    served = load_model(f"{root}/model")
    vectors = SentenceEncoder(served.encoder, served.tokenizer, layers=(-1,), max_seq_length=16).encode(["前方高能"])
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
    assert not os.path.exists("ram:")  # nothing went to a local folder named after the scheme
