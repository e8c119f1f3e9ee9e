"""run_beauty.sh, run_steam.sh, run_ml-20m.sh (and run_ml-1m.sh) pass the original scripts' hyper-parameters;
a missing data file is one message naming the file and where the original repository publishes it."""

import hashlib
import os
import subprocess
import sys

import pytest

from bert4rec import data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# FeiSun/BERT4Rec run_*.sh: gen_data_fin flags, then run.py flags.
ORIGINAL = {
    "beauty": ({"max_seq_length": "50", "max_predictions_per_seq": "30", "masked_lm_prob": "0.6",
                "mask_prob": "1.0", "dupe_factor": "10", "prop_sliding_window": "0.1",
                "signature": "-mp1.0-sw0.1-mlp0.6-df10-mpps30-msl50"},
               {"batch_size": "256", "num_train_steps": "400000", "num_warmup_steps": "100", "learning_rate": "1e-4",
                "bert_config_file": "bert4rec/bert_train/bert_config_beauty_64.json"}),
    "steam": ({"max_seq_length": "50", "max_predictions_per_seq": "20", "masked_lm_prob": "0.4",
               "mask_prob": "1.0", "dupe_factor": "10", "prop_sliding_window": "0.5",
               "signature": "-mp1.0-sw0.5-mlp0.4-df10-mppq20-msl50"},
              {"batch_size": "256", "num_train_steps": "800000", "num_warmup_steps": "100", "learning_rate": "1e-4",
               "bert_config_file": "bert4rec/bert_train/bert_config_steam_256.json"}),
    "ml-20m": ({"max_seq_length": "200", "max_predictions_per_seq": "20", "masked_lm_prob": "0.2",
                "mask_prob": "1.0", "dupe_factor": "10", "prop_sliding_window": "0.5",
                "signature": "-mp1.0-sw0.5-mlp0.2-df10-mpps20-msl200-fin"},
               {"batch_size": "256", "num_train_steps": "400000", "num_warmup_steps": "100", "learning_rate": "1e-4",
                "bert_config_file": "bert4rec/bert_train/bert_config_ml-20m_64.json"}),
    "ml-1m": ({"max_seq_length": "200", "max_predictions_per_seq": "40", "masked_lm_prob": "0.2",
               "mask_prob": "1.0", "dupe_factor": "10", "prop_sliding_window": "0.5",
               "signature": "-mp1.0-sw0.5-mlp0.2-df10-mpps40-msl200-fin"},
              {"batch_size": "256", "num_train_steps": "400000", "num_warmup_steps": "100", "learning_rate": "1e-4",
               "bert_config_file": "bert4rec/bert_train/bert_config_ml-1m_64.json"}),
}


def fake_venv(tmp_path):
    """A venv whose `python` only records its arguments (one line per call), already 'installed'."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.txt"
    (venv / "bin" / "python").write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$*\" >> {log}\n")
    (venv / "bin" / "python").chmod(0o755)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        with open(os.path.join(REPO, name), "rb") as handle:
            digest.update(handle.read())
    (venv / ".bertsuite-installed").write_text(digest.hexdigest() + "\n")
    return venv, log


def parse_flags(line):
    return dict(arg[2:].split("=", 1) for arg in line.split() if arg.startswith("--") and "=" in arg)


@pytest.mark.parametrize("dataset", sorted(ORIGINAL))
def test_script_passes_the_original_hyper_parameters(dataset, tmp_path):
    venv, log = fake_venv(tmp_path)
    environment = {key: value for key, value in os.environ.items()
                   if key in ("HOME", "LANG") or key == "PATH"}
    environment.update(BERTSUITE_VENV=str(venv), DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run(["bash", os.path.join(REPO, f"run_{dataset}.sh")], env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    gen_line, run_line = log.read_text().splitlines()
    assert gen_line.startswith("-u -m bert4rec.gen_data_fin") and run_line.startswith("-u -m bert4rec.run")
    gen_flags, run_flags = parse_flags(gen_line), parse_flags(run_line)
    gen_expected, run_expected = ORIGINAL[dataset]
    assert {key: gen_flags[key] for key in gen_expected} == gen_expected
    assert gen_flags["dataset_name"] == dataset
    assert gen_flags["last_item_passes"] == "1"  # the original's single last-item pass
    assert {key: run_flags[key] for key in run_expected} == run_expected
    assert run_flags["max_seq_length"] == gen_expected["max_seq_length"]
    assert run_flags["max_predictions_per_seq"] == gen_expected["max_predictions_per_seq"]
    assert run_flags["train_input_file"].endswith(f"{dataset}{gen_expected['signature']}.train.tfrecord")
    assert os.path.isfile(os.path.join(REPO, run_flags["bert_config_file"]))


@pytest.mark.parametrize("dataset", ["beauty", "steam"])
def test_missing_data_names_the_file_and_the_original_release(dataset, tmp_path):
    with pytest.raises(data.DataError) as error:
        data.prepare_dataset(dataset, tmp_path)
    message = str(error.value)
    assert f"{dataset}.txt" in message and str(tmp_path) in message
    assert f"https://raw.githubusercontent.com/FeiSun/BERT4Rec/master/data/{dataset}.txt" in message
    # The command line says the same in one line.
    result = subprocess.run([sys.executable, "-m", "bert4rec.gen_data_fin", f"--dataset_name={dataset}",
                             f"--data_dir={tmp_path}", f"--output_dir={tmp_path}/out"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip() == f"error: {message}"


def test_any_user_item_file_still_works_by_name(tmp_path):
    (tmp_path / "mine.txt").write_text("1 5\n1 6\n2 5\n2 7\n")
    assert data.prepare_dataset("mine", tmp_path) == str(tmp_path / "mine.txt")


def test_titles_file_reads_any_json_object_of_item_id_to_title(tmp_path):
    from bert4rec.recommend import load_titles
    from common.cli import UserError

    path = tmp_path / "movie_title_by_index.json"
    path.write_text('{"12": "Toy Story (1995)", "7": "Heat", "301": 5}')
    assert load_titles(str(path)) == {"12": "Toy Story (1995)", "7": "Heat", "301": "5"}
    path.write_text('{"12": "Toy Story",\n "7": }')
    with pytest.raises(UserError, match=rf"{path}:2: not valid JSON"):
        load_titles(str(path))
    with pytest.raises(UserError, match="no such file"):
        load_titles(str(tmp_path / "missing.json"))


def test_ml100k_script_runs_ml1m_data_flags_with_its_budget(tmp_path):
    """run_ml-100k.sh: ml-1m's data flags but 100-item windows with 20 slots, the CPU budget (128 wide, 1,800
    steps of 64, lr 1e-3), overridable."""
    venv, log = fake_venv(tmp_path)
    environment = {key: value for key, value in os.environ.items() if key in ("HOME", "LANG", "PATH")}
    environment.update(BERTSUITE_VENV=str(venv), DATA_DIR=str(tmp_path / "data"))
    script = os.path.join(REPO, "run_ml-100k.sh")
    result = subprocess.run(["bash", script], env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    gen_flags, run_flags = (parse_flags(line) for line in log.read_text().splitlines())
    gen_expected = dict(ORIGINAL["ml-1m"][0], dataset_name="ml-100k", max_seq_length="100",
                        max_predictions_per_seq="20", signature="-mp1.0-sw0.5-mlp0.2-df10-mpps20-msl100-fin")
    assert {key: gen_flags[key] for key in gen_expected} == gen_expected
    assert {key: run_flags[key] for key in ("batch_size", "num_train_steps", "num_warmup_steps", "learning_rate",
                                            "bert_config_file", "signature")} == {
        "batch_size": "64", "num_train_steps": "1800", "num_warmup_steps": "180", "learning_rate": "1e-3",
        "bert_config_file": "bert4rec/bert_train/bert_config_ml-100k_128.json",
        "signature": "-mp1.0-sw0.5-mlp0.2-df10-mpps20-msl100-fin-128-bert4rec"}
    log.unlink()
    environment.update(DIM="64", NUM_TRAIN_STEPS="2400")
    assert subprocess.run(["bash", script], env=environment, capture_output=True, timeout=60).returncode == 0
    run_flags = parse_flags(log.read_text().splitlines()[1])
    assert (run_flags["bert_config_file"], run_flags["num_train_steps"]) == (
        "bert4rec/bert_train/bert_config_ml-100k_64.json", "2400")
