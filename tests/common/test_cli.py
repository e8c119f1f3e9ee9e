"""common/cli.py: a quiet terminal by TensorFlow's own switches, one `error:` line and exit 1 for mistakes,
console scripts."""

import configparser
import glob
import importlib
import os
import re
import subprocess
import sys
import textwrap

from common import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796038170.880974    6238 port.cc:153] oneDNN custom operations are on. You may see slightly",
    "I0000 00:00:1796038170.881289    6238 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "I0000 00:00:1796038170.928594    6238 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1796038235.469801    7586 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
]
KEPT = [
    "W1130 12:00:00.000000 1234 run.py:10] a real warning of ours",
    "WARNING:tensorflow:5 out of the last 7 calls triggered tf.function retracing.",
    "E0000 00:00:1796038235.469801    7586 some_kernel.cc:52] a real C++ error",
    "a plain line of ours",
]


def test_noise_lines_are_recognised_and_real_lines_are_not():
    assert all(cli.is_noise(line.encode()) for line in NOISE)
    assert not any(cli.is_noise(line.encode()) for line in KEPT)


def test_startup_notices_are_dropped_and_everything_else_replayed(capfd):
    with cli.startup_notices_dropped():
        os.write(2, ("\n".join(NOISE + KEPT) + "\nno newline at the end").encode())  # as C++ writes: to fd 2
    assert capfd.readouterr().err == "\n".join(KEPT) + "\nno newline at the end"


SCRIPT = textwrap.dedent("""
    from common import cli
    cli.quiet_tensorflow()
    import sys
    from absl import flags, logging
    flags.DEFINE_integer("count", 1, "a number")
    flags.DEFINE_bool("tensorflow", False, "import TensorFlow and save a checkpoint")
    def main(argv):
        if flags.FLAGS.count == 2:
            raise FileNotFoundError("data/missing.txt: no such file")
        if flags.FLAGS.tensorflow:
            import tensorflow as tf
            tf.train.Checkpoint(step=tf.Variable(1)).save({checkpoint!r})
        logging.info("a log line of ours")
        logging.warning("a warning of ours")
        sys.stderr.write("bar 1/2\\rbar 2/2")                    # a progress bar: no newline
        sys.stderr.flush()
        print("stdout line")
    cli.run(main)
""")


def run_script(tmp_path, *args, env=None):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT.format(checkpoint=str(tmp_path / "checkpoint" / "ckpt")))
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("BERTSUITE_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    environment.update(env or {}, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, str(path), *args], capture_output=True, timeout=300, env=environment)
    # Bytes decoded by hand: text mode would turn the progress bar's "\r" into a newline.
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_quiet_terminal_shows_our_lines_plain_and_no_tensorflow_notices(tmp_path):
    result = run_script(tmp_path, "--tensorflow")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stdout line\n"
    # Not TensorFlow's load-time notices, nor `functional_saver.py:440] Sharding callback duration` at the save.
    assert result.stderr == "a log line of ours\nwarning: a warning of ours\nbar 1/2\rbar 2/2"


def test_verbose_brings_tensorflow_notices_and_absl_prefixes_back(tmp_path):
    result = run_script(tmp_path, "--tensorflow", "--verbose")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(cli.is_noise(line.encode()) for line in lines), result.stderr
    assert any(re.search(r"^I\d{4} .*functional_saver\.py:\d+\] Sharding callback duration", line) for line in lines)
    result = run_script(tmp_path, env={"BERTSUITE_VERBOSE": "1"})
    assert result.returncode == 0, result.stderr
    assert re.search(r"^I\d{4} [\d:.]+ +\d+ script\.py:\d+\] a log line of ours$", result.stderr, re.M), result.stderr


def test_module_command_runs_a_module_as_python_m_does(tmp_path, monkeypatch, capsys):
    (tmp_path / "probe_module.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["probe-command", "--flag=1"])
    cli.module_command("probe_module")()
    assert capsys.readouterr().out == "__main__ ['--flag=1']\n"


def test_every_script_is_a_console_script():
    """setup.cfg names a command for every module with a `__main__` block, and each runs that module."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    targets = {}
    for line in parser["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (part.strip() for part in line.split("="))
        module_name, attribute = target.split(":")
        targets[name] = getattr(importlib.import_module(module_name), attribute).__doc__
    scripts = set()
    for package in ("bert4rec", "ovt_explain", "bert_dml", "danmaku"):
        for path in glob.glob(os.path.join(REPO, package, "*.py")):
            with open(path, encoding="utf-8") as handle:
                if 'if __name__ == "__main__"' in handle.read():
                    scripts.add(f"python -m {package}.{os.path.basename(path)[:-3]}")
    assert set(targets.values()) == scripts
    assert targets["bert4rec-gen-data-fin"] == targets["gen_data_fin"] == "python -m bert4rec.gen_data_fin"


def test_user_mistakes_are_one_error_line_and_exit_status_1(tmp_path):
    for args, message in ((["--count=2"], "error: data/missing.txt: no such file"),
                          (["--count=two"], "error: flag --count=two: invalid literal for int() with base 10: 'two'"),
                          (["--cuont=2"], "error: Unknown command line flag 'cuont'")):
        result = run_script(tmp_path, *args)
        assert result.returncode == 1, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(message), result.stderr
        assert "Traceback" not in result.stderr
