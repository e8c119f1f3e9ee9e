"""Viewing logs: both formats, the real files' trailing comma, file:line:column errors, the labelling rule,
the vocabulary, the synthetic generator's planted cause, the config files' key checks."""

import json
import os

import pytest

from common.cli import UserError
from common.tokenization import load_vocab
from ovt_explain.logs import (LABELS, NOT_VIEWED, VIEWED, LogFormatError, build_vocabulary, classify_ids,
                              label_users, read_logs, viewed_threshold, write_logs, write_program_vocab)
from ovt_explain.make_synthetic_logs import generate_synthetic_logs, write_synthetic_logs
from ovt_explain.run_config import load_config


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_reads_object_with_trailing_comma_and_json_lines(tmp_path):
    obj = write(tmp_path, "viewed.txt", '{\n  "L1": "16279890004 16279893004",\n  "L2": "16277706004",\n}\n')
    assert read_logs(obj) == {"L1": ["16279890004", "16279893004"], "L2": ["16277706004"]}
    lines = write(tmp_path, "logs.jsonl", '{"L1": "1 2"}\n\n{"L2": "3"}\n')
    assert read_logs(lines) == {"L1": ["1", "2"], "L2": ["3"]}
    # Written files read back the same.
    write_logs(tmp_path / "back.txt", {"L1": ["1", "2"], "L2": []})
    assert read_logs(tmp_path / "back.txt") == {"L1": ["1", "2"], "L2": []}


@pytest.mark.parametrize("text,where,message", [
    ('{\n  "L1": "1 2",\n  "L2" "3"\n}\n', ":3:8:", "Expecting ':' delimiter"),
    ('{\n  "L1": "1 2",\n  "L2": 3\n}\n', ":3:3:", "expected a string of space-separated programme ids"),
    ('{\n  "L1": "1 2",\n  "L1": "3"\n}\n', ":3:3:", "appears twice"),
    ('{\n  "L1": "1 2",\n  "L2": "3"\n', ":4:1:", "Expecting ',' delimiter"),
    ('["1 2"]\n', ":1:1:", "expected a JSON object"),
    ("\n\n", ":1:1:", "empty log file"),
])
def test_malformed_object_files_name_file_line_column(tmp_path, text, where, message):
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(LogFormatError) as error:
        read_logs(path)
    assert str(error.value).startswith(path + where), str(error.value)
    assert message in str(error.value)
    assert isinstance(error.value, UserError)  # CLIs turn it into one error line


def test_malformed_json_lines_name_the_line(tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"L1": "1"}\n{"L2": "2",}\n')
    with pytest.raises(LogFormatError, match=r"bad\.jsonl:2:12: "):
        read_logs(path)
    path = write(tmp_path, "bad2.jsonl", '{"L1": "1"}\n{"L1": "2"}\n')
    with pytest.raises(LogFormatError, match=r"bad2\.jsonl:2:1: user 'L1' appears twice"):
        read_logs(path)


@pytest.mark.parametrize("slots,needed", [(3, 1), (4, 1), (6, 1), (9, 2), (10, 3), (12, 3)])
def test_the_originals_integer_threshold(slots, needed):
    """max(1, int(n x 0.333)): 4, 6, 9 and 10 slots need one slot fewer than a third rounded up."""
    assert viewed_threshold(slots) == needed
    target = [f"{16280000 + 3 * k:08d}1" for k in range(slots)]
    histories = {"enough": ["1001"] + target[:needed], "short": ["1001"] + target[:needed - 1]}
    users = {user.user_id: user for user in label_users(histories, target)}
    assert users["enough"].label == LABELS.index(VIEWED)
    assert users["short"].label == LABELS.index(NOT_VIEWED)


def test_history_is_whole_id_comparison_and_empty_histories_stay():
    target = ["16280244001", "16280247001", "16280250001"]  # smallest id 16280244001
    histories = {
        # Same slot time as the target's start on channel 0: a smaller whole id, so history.
        "same_time": ["16280100003", "16280244000", "16280244001"],
        # A later channel at the same time is a larger id: not history, though not watched either.
        "later_channel": ["16280100003", "16280244002"],
        "no_history": ["16280247001", "16280250001"],
    }
    users = {user.user_id: user for user in label_users(histories, target)}
    assert users["same_time"].history == ["16280100003", "16280244000"]
    assert users["later_channel"].history == ["16280100003"]
    assert users["no_history"].history == [] and users["no_history"].label == LABELS.index(VIEWED)
    assert classify_ids([5, 1, 9, 3], [4, 9], needed=1) == (True, [1, 3])


def test_plain_text_files_read_line_by_line(tmp_path):
    path = write(tmp_path, "viewed_v2.txt", "16277787006 16280697004\n\n16280769001")
    assert read_logs(path) == {"L1": ["16277787006", "16280697004"], "L2": [], "L3": ["16280769001"]}
    bad = write(tmp_path, "sentence.txt", "1 2\n3 x4 5\n")
    with pytest.raises(LogFormatError, match=r"sentence\.txt:2:3: 'x4' is not a programme id"):
        read_logs(bad)


def test_vocabulary_min_count_and_unknown(tmp_path):
    histories = [["20", "3", "3"], ["3", "100"], ["20"]]
    # The original's order: [UNK] [CLS] [SEP] [PAD] [MASK], then the ids ascending (numerically).
    assert build_vocabulary(histories, min_count=2) == ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "3", "20"]
    path = tmp_path / "vocab.txt"
    write_program_vocab(histories, path, min_count=1)
    vocab = load_vocab(path)
    assert vocab["[PAD]"] == 3 and vocab["[UNK]"] == 0 and vocab["100"] == 7 and len(vocab) == 8


def test_synthetic_logs_are_deterministic_and_plant_the_cause(tmp_path):
    first = generate_synthetic_logs(num_users=300, num_days=3, num_channels=4, random_seed=5)
    again = generate_synthetic_logs(num_users=300, num_days=3, num_channels=4, random_seed=5)
    assert first.histories == again.histories and first.planted == again.planted
    planted = first.planted
    cause = set(planted["cause_slots"])
    users = label_users(first.histories, planted["target_slots"])
    viewed = LABELS.index(VIEWED)
    assert 20 < sum(u.label == viewed for u in users) < len(users) - 20

    def episodes(user):
        return len({first.programs[slot]["program"] for slot in cause.intersection(user.history)})
    # The planted rule: >= 2 episodes of S before T -> viewed with p 0.9, otherwise 0.05.
    fans = [u.label == viewed for u in users if episodes(u) >= 2]
    others = [u.label == viewed for u in users if episodes(u) < 2]
    assert len(fans) > 30 and len(others) > 30
    assert sum(fans) / len(fans) > 0.8 and sum(others) / len(others) < 0.12
    assert all(slot in first.programs for slot in planted["cause_slots"] + planted["target_slots"])
    result = write_synthetic_logs(str(tmp_path / "syn"), num_users=50, num_days=2, num_channels=3)
    assert len(read_logs(result["paths"]["logs.txt"])) == result["users"]
    rows = open(result["paths"]["viewing.csv"], encoding="utf-8").read().splitlines()
    assert rows[0] == "userid,sortid" and len(rows) - 1 == sum(map(len, read_logs(result["paths"]["logs.txt"]).values()))
    assert json.load(open(result["paths"]["planted.json"]))["target_slots"]


def test_config_keys_are_checked_with_file_and_line(tmp_path):
    from ovt_explain.bert_cls import CLS_KEYS, IGNORED_KEYS
    from ovt_explain.bert_pretraining import PRETRAINING_KEYS

    good = write(tmp_path, "pre.json", json.dumps({"train_file": "logs.txt", "vocab_file": "v.txt",
                                                   "output_dir": "out", "num_bert_layers": 2,
                                                   "per_device_train_batch_size": 4}, indent=1))
    config = load_config(good, PRETRAINING_KEYS)
    assert config["num_hidden_layers"] == 2 and config["per_device_train_batch_size"] == 4
    assert config["train_file"] == ["logs.txt"] and config["batch_size"] is None
    # The published model's sizes and the original's evaluation share are the defaults.
    assert (config["max_seq_length"], config["hidden_size"], config["intermediate_size"]) == (512, 256, 3072)
    assert config["eval_percentage"] == 5
    typo = write(tmp_path, "typo.json", '{\n "output_dir": "o",\n "max_seq_lenght": 64\n}')
    with pytest.raises(UserError, match=r"typo\.json:3: unknown key 'max_seq_lenght' \(did you mean 'max_seq_length'"):
        load_config(typo, CLS_KEYS, IGNORED_KEYS)
    missing = write(tmp_path, "missing.json", '{"vocab_file": "v", "output_dir": "o"}')
    with pytest.raises(UserError, match=r"missing\.json: missing required key 'train_file'"):
        load_config(missing, PRETRAINING_KEYS)
    wrong = write(tmp_path, "wrong.json", '{\n "output_dir": "o",\n "epochs": "3"\n}')
    with pytest.raises(UserError, match=r"wrong\.json:3: key 'epochs' must be a number, got \"3\""):
        load_config(wrong, CLS_KEYS, IGNORED_KEYS)


def test_example_configs_document_every_key():
    from ovt_explain.bert_cls import CLS_KEYS, IGNORED_KEYS as CLS_IGNORED
    from ovt_explain.bert_pretraining import IGNORED_KEYS, PRETRAINING_KEYS

    folder = os.path.join(os.path.dirname(__file__), "..", "..", "ovt_explain", "configs")
    for name, keys, ignored in (("pretraining_config.json", PRETRAINING_KEYS, IGNORED_KEYS),
                                ("cls_config.json", CLS_KEYS, CLS_IGNORED)):
        path = os.path.join(folder, name)
        example = json.load(open(path))
        for key in keys:
            assert f"//{key.name}" in example, f"{name} does not document {key.name}"
        load_config(path, keys, ignored)  # and it loads


def test_paper_sample_files_and_train_dir_layout(shared_data, tmp_path):
    """The paper's sample files (trailing comma and all) read, and train_dir labels them by file name."""
    from ovt_explain.bert_cls import load_labelled_users

    folder = os.path.join(shared_data, "ovt")
    if not os.path.isdir(folder):
        pytest.skip("../shared/data/ovt is not present")
    viewed = read_logs(os.path.join(folder, "viewed.txt"))
    assert len(viewed) == 5 and all(len(h) > 10 and all(len(p) == 11 and p.isdigit() for p in h)
                                    for h in viewed.values())
    config = {"train_dir": folder, "train_file": None, "target_program": None, "random_seed": 0,
              "line_sampling": "all", "train_data_max_per_label": 4}
    users = load_labelled_users(config, "cls_config.json")
    assert [label for *_, label in users] == [0] * 4 + [1] * 4  # viewed* = 0, not_viewed* = 1; predict_missed unused
    assert users[0][0] == next(iter(viewed)) and users[0][1] == viewed[users[0][0]]


def test_the_originals_config_files_load_as_they_are(tmp_path):
    """The keys and values of the original's pretraining_config.json and cls_config.json (which sets
    do_train twice); num_bert_layers means num_hidden_layers, the per-device batch stays per device."""
    from ovt_explain.bert_cls import CLS_KEYS, IGNORED_KEYS as CLS_IGNORED
    from ovt_explain.bert_pretraining import IGNORED_KEYS, PRETRAINING_KEYS

    pre = write(tmp_path, "pretraining_config.json", json.dumps({
        "train_file": "/data/sentence.txt", "vocab_file": "/data/vocab.txt", "output_dir": "/data/pretraining/",
        "num_attention_heads": 8, "num_bert_layers": 8, "hidden_size": 256, "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 16, "num_train_epochs": 8, "save_total_limit": 5, "num_proc": 8,
        "load_best_model_at_end": True, "evaluation_strategy": "steps", "eval_steps": 500,
        "logging_strategy": "steps", "logging_steps": 500, "eval_percentage": 3, "log_level": "info"}, indent=1))
    config = load_config(pre, PRETRAINING_KEYS, IGNORED_KEYS)
    assert (config["num_hidden_layers"], config["per_device_train_batch_size"], config["batch_size"]) == (8, 16, None)
    assert (config["epochs"], config["eval_percentage"], config["intermediate_size"]) == (8.0, 3.0, 3072)
    cls_text = ('{\n "train_dir": "./classify_data/", "model_dir": "./pretraining/models", "output_dir": "./out/",\n'
                ' "num_proc": 2, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2,\n'
                ' "max_seq_length": 512, "do_train": true, "eval_steps": 500, "evaluation_strategy": "steps",\n'
                ' "train_data_max_per_label": 10000, "num_train_epochs": 2, "logging_strategy": "steps",\n'
                ' "logging_steps": 500, "load_best_model_at_end": true, "randomize_data": false,\n'
                ' "do_train": true, "do_predict": false\n}')
    config = load_config(write(tmp_path, "cls_config.json", cls_text), CLS_KEYS, CLS_IGNORED)
    assert config["pretrained_model"] == "./pretraining/models" and config["line_sampling"] == "randrange7"
    assert (config["min_share"], config["split_seed"], config["metric_for_best_model"]) == (0.333, 42, "loss")
