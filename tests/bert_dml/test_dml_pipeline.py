"""BERT-DML end to end on a synthetic two-topic corpus, as a user runs it: train_dml (CLI) ->
extraction (the original's script name) -> cluster / compare; resume; the classifier baseline.

Sentences mix three topic words (sports or food) with ten filler words, so only the topic words tell
the labels apart: a small model trained from scratch must make kNN accuracy of its DML features
clearly better than the same model before training.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPORTS = "game team score goal player match win coach ball season league referee".split()
FOOD = "recipe cook bake flavor sauce oven dish meal taste spice kitchen bread".split()
FILLER = ("the a and of it was very really quite this that so then there here when what who "
          "how why all some many few most").split()
TINY_CONFIG = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
               "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 32, "type_vocab_size": 2,
               "initializer_range": 0.02}


def write_corpus(path, count, seed):
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            label, topic = ("sports", SPORTS) if index % 2 == 0 else ("food", FOOD)
            words = list(rng.choice(topic, 3, replace=False)) + list(rng.choice(FILLER, 10, replace=False))
            rng.shuffle(words)
            handle.write(f"{label}\t{' '.join(words)}\n")


def run_script(script, *args):
    environment = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, "bert_dml", script), *args], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert_dml")
    train, evaluation = str(root / "train.txt"), str(root / "eval.txt")
    write_corpus(train, 200, seed=0)
    write_corpus(evaluation, 60, seed=1)
    config = str(root / "bert_config.json")
    with open(config, "w") as handle:
        json.dump(TINY_CONFIG, handle)
    out = str(root / "dml")
    result = run_script("train_dml.py", f"--train={train}", f"--eval={evaluation}", f"--bert_config_file={config}",
                        f"--out={out}", "--epoch=2", "--batchsize=32", "--learnrate=1e-2",
                        "--triplets_per_epoch=960", "--max_seq_length=20", "--vocab_size=200", "--noprogress")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "train": train, "eval": evaluation, "config": config, "out": out, "stdout": result.stdout}


@pytest.fixture(scope="module")
def extracted(trained):
    """The trained model's features of the eval file, by the original's script name (stdout and a file)."""
    result = run_script("extruct_bert_metrics.py", f"--input={trained['eval']}", f"--model={trained['out']}",
                        f"--label={trained['out']}/labels.json", "-b", "16", "-g", "-1")
    assert result.returncode == 0, result.stderr[-3000:]
    # --label honoured as the original: its ids, then the input's count and classes.
    assert "# source: 60, class: 2, {'sports': 0, 'food': 1}" in result.stderr
    path = str(trained["root"] / "dml-features.txt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(result.stdout)
    return {"stdout": result.stdout, "path": path}


@pytest.mark.slow
def test_training_logs_like_the_original_and_writes_its_outputs(trained):
    lines = [line for line in trained["stdout"].splitlines() if line.startswith("[")]
    assert len(lines) == 2
    out = trained["out"]
    log = json.load(open(os.path.join(out, "log.json")))
    assert [entry["epoch"] for entry in log] == [1, 2]
    # 960 triplets / 32 = 30 updates an epoch. Chainer's lr column: sqrt(1 - 0.999^t) / (1 - 0.9^t) after
    # t updates, hand-computed: t=30 -> sqrt(0.0295690) / 0.9576088 = 0.179569; t=60 -> 0.2413788 / 0.9982030.
    # eta: the original's schedule, 1e-2 in epoch 1, lowered by 1e-2 / epochs after each epoch.
    for epoch, (line, lr, eta) in enumerate(zip(lines, ["0.179569", "0.241813"], ["0.010000", "0.005000"]), 1):
        assert re.fullmatch(rf"\[  {epoch}\] T/loss=\d\.\d{{6}} T/acc1=0\.000000 T/acc2=0\.000000 T/sec= \d+\.\d{{6}} "
                            r"D/loss=\d\.\d{6} D/acc1=0\.000000 D/acc2=0\.000000 D/sec= \d+\.\d{6} "
                            rf"lr={lr} eta={eta} D/knn10=\d\.\d{{6}}", line), line
    # The log's rates are the optimizer's own (read after its last step), kept at full precision.
    np.testing.assert_allclose([entry["eta"] for entry in log], [1e-2, 5e-3], rtol=1e-6)
    np.testing.assert_allclose([entry["lr"] for entry in log],
                               [np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) for t in (30, 60)], rtol=1e-6)
    assert json.load(open(os.path.join(out, "labels.json"))) == ["sports", "food"]
    assert os.path.getsize(os.path.join(out, "loss.png")) > 1000
    best = min(log, key=lambda entry: entry["D/loss"])["epoch"]
    best_info = json.load(open(os.path.join(out, "best", "best.json")))
    assert best_info["record"]["epoch"] == best and best_info["metric"] == "D/loss"
    assert os.path.isfile(os.path.join(out, "best", f"ckpt-{best_info['step']}.index"))
    assert [record["epoch"] for record in json.load(open(os.path.join(out, "eval_history.json")))] == [1, 2]


@pytest.mark.slow
def test_dml_features_separate_the_topics_much_better_than_before_training(trained, extracted):
    import keras

    from bert_dml import data as dml_data
    from bert_dml.model import BertDML, batched_outputs, feature_function
    from common.checkpoints import read_model_folder
    from common.encoder import BertEncoder
    from common.metrics import knn_accuracy
    from common.tokenization import BertTokenizer

    lines = extracted["stdout"].splitlines()
    assert len(lines) == 60  # one line per input line
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == 513 for row in rows)
    assert all(re.fullmatch(r"-?\d+\.\d{6}", value) for value in rows[0][1:])
    labels = [row[0] for row in rows]
    assert labels == [line.split("\t")[0] for line in open(trained["eval"], encoding="utf-8")]
    after = knn_accuracy(np.array([[float(v) for v in row[1:]] for row in rows]), labels, k=10)

    saved = read_model_folder(trained["out"])
    keras.utils.set_random_seed(5)
    untrained = BertDML(BertEncoder(saved.config))
    texts = dml_data.read_labeled_texts(trained["eval"])
    tokenizer = BertTokenizer.from_vocab_file(saved.vocab_path, lowercase=saved.run_config["lowercase"])
    features = dml_data.encode_texts(tokenizer, texts.texts, 20)
    before = knn_accuracy(batched_outputs(feature_function(lambda f: untrained(f, training=False)), features, 16),
                          labels, k=10)
    assert after >= 0.9 and after >= before + 0.2, (before, after)


@pytest.mark.slow
def test_extraction_feeds_cls_and_text_without_sep_as_the_original(trained, extracted):
    from bert_dml.features import load_feature_model

    features_fn, tokenizer, max_positions = load_feature_model("dml", model=trained["out"])
    assert max_positions == TINY_CONFIG["max_position_embeddings"]  # the default truncation
    text = open(trained["eval"], encoding="utf-8").readline().rstrip("\n").split("\t")[1]
    ids = tokenizer.convert_tokens_to_ids(["[CLS]"] + tokenizer.tokenize(text))
    with_sep = ids + tokenizer.convert_tokens_to_ids(["[SEP]"])

    def features_of(token_ids):
        batch = {"input_ids": np.array([token_ids], np.int32), "input_mask": np.ones((1, len(token_ids)), np.int32),
                 "segment_ids": np.zeros((1, len(token_ids)), np.int32)}
        return np.asarray(features_fn(batch))[0]

    extracted_row = np.array([float(value) for value in extracted["stdout"].splitlines()[0].split("\t")[1:]])
    np.testing.assert_allclose(extracted_row, features_of(ids), atol=2e-6)
    assert np.abs(extracted_row - features_of(with_sep)).max() > 1e-3  # [SEP] would change the features


@pytest.mark.slow
def test_cluster_command_prints_the_metric_table(trained, extracted):
    features_path = extracted["path"]
    table = str(trained["root"] / "clusters.json")
    result = run_script("cluster.py", features_path, f"--json={table}", "--noplot")
    assert result.returncode == 0, result.stderr[-3000:]
    header = result.stdout.splitlines()[0].split()
    assert header[:4] == ["algorithm", "ari", "nmi", "silhouette"]
    names = [line.split()[0] for line in result.stdout.splitlines()[1:9]]
    assert names == ["labels", "KMeans", "Ward", "Spectral", "DBSCAN", "OPTICS", "Birch", "GaussianMixture"]
    saved = json.load(open(table))
    assert [row["algorithm"] for row in saved["results"]] == names
    kmeans = saved["results"][1]
    assert kmeans["ari"] > 0.5 and 0 < kmeans["nmi"] <= 1


@pytest.mark.slow
def test_resume_continues_after_the_last_finished_epoch(trained):
    from bert_dml.training import train_dml

    printed = []
    log = train_dml(trained["train"], trained["eval"], trained["out"], epochs=3, batchsize=32, learnrate=1e-2,
                    bert_config_file=trained["config"], max_seq_length=20, vocab_size=200,
                    triplets_per_epoch=960, noplot=True, progress=False, resume=trained["out"], start_epoch=3,
                    print_fn=printed.append)
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    # epoch 3 of 3 (3 x 30 updates in all): the restored optimizer continued its step count and schedule.
    assert log[-1]["eta"] == pytest.approx(1e-2 / 3, rel=1e-5)
    assert log[-1]["lr"] == pytest.approx(np.sqrt(1 - 0.999 ** 90) / (1 - 0.9 ** 90), rel=1e-6)
    assert sum(line.startswith("[  3]") for line in printed) == 1
    assert not any(line.startswith("[  2]") for line in printed)


@pytest.mark.slow
def test_classifier_baseline_and_classified_features(trained):
    from bert_dml.features import extract_features
    from bert_dml.training import train_classifier

    out = str(trained["root"] / "cls")
    printed = []
    log = train_classifier(trained["train"], trained["eval"], out, epochs=3, batchsize=32, learnrate=2e-3,
                           bert_config_file=trained["config"], max_seq_length=20, vocab_size=200,
                           noplot=True, progress=False, print_fn=printed.append)
    # No early stopping by default: every epoch runs.
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    assert all(0 <= entry["D/uar"] <= 1 and "T/accuracy" in entry for entry in log)
    # Both best models, each at the first epoch with its best value, as the original keeps them.
    for directory, metric, pick in (("best", "D/uar", max), ("best_loss", "D/loss", min)):
        best_epoch = next(e["epoch"] for e in log if e[metric] == pick(x[metric] for x in log))
        best_info = json.load(open(os.path.join(out, directory, "best.json")))
        assert (best_info["metric"], best_info["record"]["epoch"]) == (metric, best_epoch), directory
        name = "uar" if directory == "best" else "loss"
        assert any(line.startswith(f"saving early-stopped model ({name}) at epoch {best_epoch}")
                   for line in printed), printed
    labels, features = extract_features("classified", trained["eval"], model=os.path.join(out, "best"),
                                        batchsize=16)
    assert features.shape == (60, TINY_CONFIG["hidden_size"]) and len(labels) == 60


def test_command_line_errors_are_one_line_naming_file_and_line(tmp_path):
    evaluation, config = tmp_path / "eval.txt", tmp_path / "bert_config.json"
    write_corpus(str(evaluation), 10, seed=1)
    config.write_text(json.dumps(TINY_CONFIG))
    bad_features = tmp_path / "features.txt"
    bad_features.write_text("a\t0.1\t0.2\nb\t0.3\tx\n", encoding="utf-8")
    result = run_script("cluster.py", str(bad_features))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {bad_features}:2: 'x' is not a number"

    cp1252 = tmp_path / "train.txt"
    cp1252.write_bytes("0\tfine\n1\tit's a caf\u00e9\n".encode("cp1252"))
    result = run_script("train_dml.py", f"--train={cp1252}", f"--eval={evaluation}",
                        f"--bert_config_file={config}", f"--out={tmp_path / 'out'}")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {cp1252}:2: not valid utf-8") and "--encoding" in last
    assert not (tmp_path / "out").exists()  # nothing half-written
