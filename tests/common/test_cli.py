"""common/cli.py: TensorFlow's start-up notices filtered from stderr, one `error:` line and exit 1 for mistakes."""

import os
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


SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    from common import cli
    cli.quiet_tensorflow()
    from absl import flags
    flags.DEFINE_integer("count", 1, "a number")
    def main(argv):
        if flags.FLAGS.count == 2:
            raise FileNotFoundError("data/missing.txt: no such file")
        lines = {lines!r}
        os.write(2, ("\\n".join(lines) + "\\n").encode())      # as TensorFlow's C++ writes: straight to fd 2
        sys.stderr.write("bar 1/2\\rbar 2/2")                    # a progress bar: no newline, shown as it goes
        sys.stderr.flush()
        print("stdout line")
    cli.run(main)
""")


def run_script(tmp_path, *args, env=None):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT.format(repo=REPO, lines=NOISE + KEPT))
    environment = dict(os.environ, **(env or {}))
    environment.pop("BERTSUITE_VERBOSE", None) if not env else None
    result = subprocess.run([sys.executable, str(path), *args], capture_output=True, timeout=120, env=environment)
    # Bytes decoded by hand: text mode would turn the progress bar's "\r" into a newline.
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_stderr_keeps_real_lines_and_the_progress_bar_only(tmp_path):
    result = run_script(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stdout line\n"
    assert result.stderr == "\n".join(KEPT) + "\nbar 1/2\rbar 2/2"


def test_verbose_brings_tensorflow_notices_back(tmp_path):
    for result in (run_script(tmp_path, "--verbose"), run_script(tmp_path, env={"BERTSUITE_VERBOSE": "1"})):
        assert result.returncode == 0, result.stderr
        assert result.stderr.startswith("\n".join(NOISE + KEPT))


def test_user_mistakes_are_one_error_line_and_exit_status_1(tmp_path):
    for args, message in ((["--count=2"], "error: data/missing.txt: no such file"),
                          (["--count=two"], "error: flag --count=two: invalid literal for int() with base 10: 'two'"),
                          (["--cuont=2"], "error: Unknown command line flag 'cuont'")):
        result = run_script(tmp_path, *args)
        assert result.returncode == 1, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(message), result.stderr
        assert "Traceback" not in result.stderr
