"""ovt_explain end to end on synthetic logs: pre-train -> fine-tune -> explain, as a user runs it.

The logs plant a cause (episodes of series S drive watching target T): the fine-tuned tiny model must
separate viewed from not_viewed on held-out users, and the explanations must write their files.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ovt_explain.bert_cls import CLS_KEYS, fine_tune
from ovt_explain.bert_pretraining import PRETRAINING_KEYS, pretrain
from ovt_explain.logs import read_logs
from ovt_explain.make_synthetic_logs import write_synthetic_logs
from ovt_explain.run_config import REQUIRED

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def defaults(keys):
    return {key.name: (None if key.default is REQUIRED else key.default) for key in keys}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The original's pipeline on synthetic files: viewing CSV -> sentence.txt, metadata -> vocab.txt
    ([PAD] = 3), labelled plain-text files -> pre-training -> fine-tuning."""
    from ovt_explain.original_data import classify_sentences, convert_to_sentences, save_vocab, target_sort_ids

    work = tmp_path_factory.mktemp("ovt")
    paths = write_synthetic_logs(str(work / "syn"), num_users=700, num_days=3, num_channels=4,
                                 random_seed=1)["paths"]
    sentences = str(work / "sentence.txt")
    convert_to_sentences(paths["viewing.csv"], sentences)
    vocab_file = save_vocab(paths["tv_meta_data.csv"], str(work))
    target = target_sort_ids(paths["tv_meta_data.csv"], "Special T", "")
    classify_sentences(sentences, target, str(work / "classify"))
    pre_config = defaults(PRETRAINING_KEYS)
    pre_config.update(train_file=[sentences], vocab_file=vocab_file, output_dir=str(work / "pre"),
                      num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=128,
                      max_seq_length=40, per_device_train_batch_size=32, epochs=16.0, learning_rate=5e-3,
                      warmup_proportion=0.1, eval_steps=1000, logging_steps=1000, save_steps=1000, random_seed=1)
    pre = pretrain(pre_config, progress=False)
    cls_config = defaults(CLS_KEYS)
    cls_config.update(train_dir=str(work / "classify"), pretrained_model=str(work / "pre"),
                      output_dir=str(work / "cls"), max_seq_length=40, line_sampling="all",
                      per_device_train_batch_size=32, epochs=6.0, learning_rate=2e-3, warmup_proportion=0.1,
                      freeze_bert_params=False, eval_steps=1000, logging_steps=1000, save_steps=1000,
                      random_seed=1)
    results = fine_tune(cls_config, progress=False)
    return {"work": work, "paths": paths, "pre": pre, "pre_config": pre_config, "results": results,
            "cls_dir": str(work / "cls"), "sentences": sentences, "target": target}


def masked_episode_top5(pre_dir, lines, cause, episode_of, frequent, max_seq_length):
    """Masks the middle slot of each run of three consecutive slots of series S in `lines`; returns the
    share of cases whose top 5 predictions hold (the masked slot, a slot of its episode) and the share
    whose masked episode is among the 5 most frequent ids `frequent`, and the number of cases."""
    import tensorflow as tf

    from common.checkpoints import restore_checkpoint
    from common.config import BertConfig
    from common.encoder import BertEncoder
    from common.heads import BertPretrainer
    from common.tokenization import load_vocab

    vocab = load_vocab(os.path.join(pre_dir, "vocab.txt"))
    token_of = {index: token for token, index in vocab.items()}
    model = BertPretrainer(BertEncoder(BertConfig.from_json_file(os.path.join(pre_dir, "bert_config.json"))),
                           use_next_sentence=False)
    restore_checkpoint(tf.train.Checkpoint(model=model), tf.train.latest_checkpoint(pre_dir))
    inputs, positions, answers = [], [], []
    for line in lines:
        line = line[:max_seq_length - 2]
        for i in range(1, len(line) - 1):
            if line[i - 1] in cause and line[i] in cause and line[i + 1] in cause:
                tokens = [vocab["[CLS]"]] + [vocab.get(t, vocab["[UNK]"]) for t in line] + [vocab["[SEP]"]]
                answers.append(line[i])
                tokens[i + 1] = vocab["[MASK]"]
                inputs.append(tokens + [vocab["[PAD]"]] * (max_seq_length - len(tokens)))
                positions.append([i + 1])
    ids = np.asarray(inputs, np.int32)
    features = {"input_ids": ids, "input_mask": (ids != vocab["[PAD]"]).astype(np.int32),
                "segment_ids": np.zeros_like(ids), "masked_lm_positions": np.asarray(positions, np.int32)}
    logits = model(features, training=False)["masked_lm_logits"].numpy()[:, 0]
    top5 = [[token_of[i] for i in row] for row in np.argsort(-logits, axis=1)[:, :5]]
    exact = np.mean([answer in row for answer, row in zip(answers, top5)])
    episode = np.mean([any(episode_of.get(t) == episode_of[answer] for t in row) for answer, row in zip(answers, top5)])
    baseline = np.mean([any(episode_of.get(t) == episode_of[answer] for t in frequent) for answer in answers])
    return float(exact), float(episode), float(baseline), len(answers)


@pytest.mark.slow
def test_pretraining_learns_the_planted_series(trained):
    import collections

    pre = trained["pre"]
    folder = trained["pre_config"]["output_dir"]
    for name in ("bert_config.json", "vocab.txt", "run_config.json", "eval_history.json", "checkpoint"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert pre["steps"] == pre["num_train_steps"] > 0
    # One line = one example; the first 5 % of sentence.txt's 700 lines evaluate.
    assert (pre["eval_examples"], pre["train_examples"]) == (35, 665)
    # The planted structure: an episode slot of series S masked between two others; on the evaluation
    # lines its episode is in the top 5 predictions (often the exact slot), while the 5 most frequent
    # ids of sentence.txt hold it almost never.
    cause = set(json.load(open(trained["paths"]["planted.json"]))["cause_slots"])
    programs = json.load(open(trained["paths"]["programs.json"]))
    episode_of = {slot: entry["program"] for slot, entry in programs.items()}
    lines = [line.split() for line in open(trained["sentences"])]
    frequent = [slot for slot, _ in collections.Counter(s for line in lines for s in line).most_common(5)]
    exact, episode, baseline, cases = masked_episode_top5(folder, lines[:35], cause, episode_of, frequent, 40)
    assert cases >= 20 and episode >= 0.8 and exact >= 0.3 and baseline <= 0.2, (exact, episode, baseline, cases)


@pytest.mark.slow
def test_fine_tuning_learns_the_planted_cause_and_writes_samples(trained):
    results, cls_dir = trained["results"], trained["cls_dir"]
    assert results["test"]["macro_f1"] > 0.75, results["test"]
    assert results["test"]["roc_auc"] > 0.8, results["test"]
    assert json.load(open(os.path.join(cls_dir, "test_results.json")))["test"]["accuracy"] == results["test"]["accuracy"]
    predictions = [json.loads(line) for line in open(os.path.join(cls_dir, "predictions.jsonl"))]
    assert {p["split"] for p in predictions} == {"train", "validation", "test"}
    # The original's split: 700 users shuffled, int(0.8 n) / int(0.1 n) / the rest.
    assert [sum(p["split"] == name for p in predictions) for name in ("train", "validation", "test")] == [560, 70, 70]
    test_users = {p["user_id"]: p for p in predictions if p["split"] == "test"}
    viewed = read_logs(os.path.join(cls_dir, "viewed.txt"))
    missed = read_logs(os.path.join(cls_dir, "predict_missed.txt"))
    not_viewed = read_logs(os.path.join(cls_dir, "not_viewed.txt"))
    assert viewed and not_viewed
    assert len(viewed) + len(missed) + len(not_viewed) == len(test_users)
    assert all(test_users[u]["label"] == test_users[u]["predicted"] == "viewed" for u in viewed)
    assert all(test_users[u]["label"] != test_users[u]["predicted"] for u in missed)
    # The samples hold the model's input: the first max_seq_length - 2 ids below the target's smallest id.
    smallest = min(trained["target"])
    assert all(len(h) <= 38 and all(int(s) < smallest for s in h) for h in viewed.values())
    # The classifier reads the vocabulary's [PAD] (id 3 in the original's vocab.txt).
    from ovt_explain.modeling import LoadedClassifier

    classifier = LoadedClassifier(cls_dir)
    assert classifier.vocab["[PAD]"] == 3
    features = classifier.encode([next(iter(viewed.values()))[:5]])
    assert features["input_ids"][0, 7:].tolist() == [3] * 33


@pytest.mark.slow
def test_visualization_writes_the_originals_pictures_html_and_dumps(trained):
    from ovt_explain.attention_visualization import visualize

    out = trained["work"] / "figs"
    result = visualize(trained["cls_dir"], os.path.join(trained["cls_dir"], "viewed.txt"), str(out),
                       trained["paths"]["programs.json"], max_users=2, dump=True)
    pngs = [path for path in result["files"] if path.endswith(".png")]
    assert len(pngs) == 2 * 6  # per user: 3 graphs, heatmap, importance, prediction
    assert all(os.path.getsize(path) > 5000 for path in pngs)
    for method, name in (("raw", "raw_attention"), ("rollout", "attention_rollout"), ("flow", "attention_flow")):
        assert len(os.listdir(out / "images" / "viewed" / method)) == 2
        assert all(path.endswith(f"_{name}_graph.png") for path in os.listdir(out / "images" / "viewed" / method))
    page = open(result["html"], encoding="utf-8").read()
    assert "<script" in page and "http://" not in page and "https://" not in page  # self-contained
    explanation = result["explanations"][0]
    assert explanation.user_id in page
    dump = json.load(open(out / "datas" / f"{explanation.user_id.replace(':', '_')}_attention_flow.json"))
    assert dump["tokens"][0] == "[CLS]" and set(dump["data"]) == {"L1_to_L0", "L2_to_L1"}
    assert dump["rows"] == [0]
    np.testing.assert_allclose(dump["data"]["L2_to_L1"][0], explanation.layers["flow"][1][0], atol=1e-5)
    raw = json.load(open(out / "datas" / f"{explanation.user_id.replace(':', '_')}_raw_attention.json"))
    # The original's raw attention keeps half of each row on the token itself (mean + I, renormalised).
    assert all(raw["data"]["L1_to_L0"][i][i] >= 0.5 - 1e-5 for i in range(len(raw["tokens"])))


def test_cli_reports_a_wrong_config_key_in_one_line(tmp_path):
    config = tmp_path / "cls_config.json"
    config.write_text('{\n  "output_dir": "out",\n  "num_train_epoch": 2\n}\n')
    completed = subprocess.run([sys.executable, "-m", "ovt_explain.bert_cls", str(config)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert f"error: {config}:3: unknown key 'num_train_epoch' (did you mean 'num_train_epochs'?)" in completed.stderr


_HARNESS = """<script>
window.addEventListener("error", function (e) { console.log("HARNESS-ERROR " + e.message); });
try {
  var u = document.getElementById("user"), m = document.getElementById("method"), l = document.getElementById("layer");
  var steps = 0;
  for (var i = 0; i < u.options.length; i++) {
    u.value = u.options[i].value; u.dispatchEvent(new Event("change"));
    for (var j = 0; j < m.options.length; j++) {
      m.value = m.options[j].value; m.dispatchEvent(new Event("change"));
      for (var k = 0; k < l.options.length; k++) {
        l.value = l.options[k].value; l.dispatchEvent(new Event("change"));
        document.querySelectorAll(".tok").forEach(function (t) { t.dispatchEvent(new Event("mouseenter")); });
        document.querySelectorAll(".tok")[1].dispatchEvent(new Event("click"));
        steps++;
      }
    }
  }
  console.log("HARNESS-OK " + steps + " " + document.querySelectorAll(".tok").length);
} catch (e) { console.log("HARNESS-ERROR " + e); }
</script>"""


@pytest.mark.slow
def test_html_page_runs_in_headless_chromium_without_console_errors(trained, tmp_path):
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium to render the page")
    from ovt_explain.attention_visualization import visualize

    result = visualize(trained["cls_dir"], os.path.join(trained["cls_dir"], "not_viewed.txt"), str(tmp_path),
                       None, max_users=2, methods=["raw", "rollout", "flow"])
    page = open(result["html"], encoding="utf-8").read()
    # Drive every user x method x layer, hover every token and click one, as a user would.
    driven = tmp_path / "driven.html"
    driven.write_text(page.replace("</body></html>", _HARNESS + "</body></html>"), encoding="utf-8")
    completed = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=3000", "--dump-dom", driven.as_uri()],
        capture_output=True, text=True, timeout=120)
    console = [line for line in completed.stderr.splitlines() if "CONSOLE" in line]
    assert any("HARNESS-OK 12 " in line for line in console), console  # 2 users x 3 methods x 2 layers
    assert not [line for line in console if "HARNESS-ERROR" in line or "Uncaught" in line], console
    assert completed.stdout.count('class="tok') > 3  # the script rendered the programmes


@pytest.mark.slow
def test_visualization_names_a_checkpoint_that_is_not_a_classifier(trained, tmp_path):
    from common.cli import UserError
    from ovt_explain.attention_visualization import visualize

    users = os.path.join(trained["cls_dir"], "viewed.txt")
    # The pre-training folder is a model folder too, but has no classification head.
    with pytest.raises(UserError, match=r"not a viewed/not_viewed classifier written by bert_cls \(missing"):
        visualize(trained["pre_config"]["output_dir"], users, str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match=r"^nothere: neither a bert_cls output folder"):
        visualize("nothere", users, str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_japanese_programme_titles_are_drawn_with_a_cjk_font(tmp_path):
    from common.plotting import cjk_font_path
    from ovt_explain.attention_visualization import Explanation, explain_attention, plot_importance

    if cjk_font_path() is None:
        pytest.skip("no CJK font installed")
    rng = np.random.default_rng(0)
    tokens = ["[CLS]", "16278408001", "16278411001", "[SEP]"]
    attention = rng.random((2, 2, 4, 4))
    layers, rows = explain_attention(attention / attention.sum(-1, keepdims=True), ("raw",))
    explanation = Explanation("U1", tokens, [0.3, 0.7], ["not_viewed", "viewed"], layers, rows)
    pictures = []
    for title in ("ドラマ", "アニメ"):
        programs = {token: {"channel": "Ch1", "time": "2021-08-01 18:00", "title": title} for token in tokens[1:3]}
        path = str(tmp_path / f"{len(pictures)}.png")
        plot_importance(explanation, ["raw"], path, programs)
        pictures.append(open(path, "rb").read())
    # Without a CJK font every missing glyph is the same empty box, so both titles would draw alike.
    assert pictures[0] != pictures[1]


def test_a_wrong_pretrained_model_is_named(tmp_path):
    from common.cli import UserError

    config = defaults(CLS_KEYS)
    config.update(train_file=["logs.txt"], target_program=["16278408001"], output_dir=str(tmp_path / "cls"),
                  pretrained_model=str(tmp_path / "nothere"))
    with pytest.raises(UserError, match=r"^cls_config\.json: pretrained_model .*nothere: not a bert_pretraining "
                                        r"output_dir \(no bert_config\.json there\)"):
        fine_tune(config, config_path="cls_config.json")
    assert not (tmp_path / "cls").exists()
