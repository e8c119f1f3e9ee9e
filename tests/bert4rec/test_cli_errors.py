"""Every BERT4Rec command line answers a wrong path or a bad value with one `error:` line and exit status 1."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(module, *args):
    environment = {key: value for key, value in os.environ.items() if key != "BERTSUITE_VERBOSE"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=environment)


def assert_one_error_line(result, *fragments):
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_recommend_with_a_wrong_checkpoint_dir():
    result = run_cli("bert4rec.recommend", "--checkpointDir=./output/nope", "--history=1 2 3")
    assert_one_error_line(result, "./output/nope", "no such directory")


def test_recommend_with_a_bad_history_is_a_user_error():
    from bert4rec.recommend import parse_history
    from common.cli import UserError

    assert parse_history("12, 7 301") == [12, 7, 301]
    for text, message in (("1 two", "--history must be item ids"), (" ", "--history is empty")):
        with pytest.raises(UserError, match=message):  # cli.run turns it into one error: line, exit 1
            parse_history(text)


def test_run_with_a_missing_input_file_and_a_bad_value(tmp_path):
    common = ["--do_eval", f"--checkpointDir={tmp_path}/ckpt", "--bert_config_file=bert4rec/bert_train/"
              "bert_config_ml-1m_64.json", f"--user_history_filename={tmp_path}/x.his"]
    assert_one_error_line(run_cli("bert4rec.run", *common, f"--vocab_filename={tmp_path}/nope.vocab"),
                          "--vocab_filename", "nope.vocab", "no such file")
    assert_one_error_line(run_cli("bert4rec.run", "--do_train", "--batch_size=big"), "--batch_size=big")


def test_gen_data_with_a_missing_dataset_and_a_bad_value(tmp_path):
    assert_one_error_line(run_cli("bert4rec.gen_data_fin", "--dataset_name=nope", f"--data_dir={tmp_path}",
                                  f"--output_dir={tmp_path}/out"), "nope.txt")
    (tmp_path / "toy.txt").write_text("1 1\n1 2\n2 1\n2 2\n")
    assert_one_error_line(run_cli("bert4rec.gen_data_fin", "--dataset_name=toy", f"--data_dir={tmp_path}",
                                  f"--output_dir={tmp_path}/out", "--mask_prob=1.5"), "mask_prob")
