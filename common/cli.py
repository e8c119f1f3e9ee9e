"""What every command-line script of the suite shares: a quiet TensorFlow and one `error:` line for bad input.

Use it as the first import of a script, before anything imports TensorFlow:

    from common import cli
    cli.quiet_tensorflow()
    ...
    if __name__ == "__main__":
        cli.run(main)          # absl flags parsed; bad flags, UsageError, UserError -> "error: ..." and exit 1

On a CPU-only machine TensorFlow prints start-up notices that look like failures (`failed call to cuInit`,
oneDNN and CPU-feature notices, absl's "All log messages before absl::InitializeLog()" warning). Many are
written by C++ before logging is initialised, where TF_CPP_MIN_LOG_LEVEL cannot reach them, so
`quiet_tensorflow` also filters the process's stderr (file descriptor 2) line by line: those notices are
dropped, everything else (our log lines, progress bars, real warnings and errors) passes unchanged.
`--verbose` on the command line or `BERTSUITE_VERBOSE=1` brings TensorFlow's own lines back.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from typing import Callable

VERBOSE_ENV = "BERTSUITE_VERBOSE"

# Start-up notices of TensorFlow's C++ runtime that say nothing wrong about the user's run.
_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\."
    rb"|[IWE]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_driver|cuda_diagnostics"
    rb"|cuda_executor|cuda_fft|cuda_dnn|cuda_blas|util|gpu_device|dso_loader)\.cc:\d+\] .*"
    rb"|I\d{4} [\d:.]+ +\d+ [\w.]+\.cc:\d+\] .*)$")  # any other C++ INFO line too
# A partial line that may still become noise is held back until its newline; anything else passes at once
# (progress bars redraw with "\r" and never end their line).
_MAYBE_NOISE = re.compile(rb"^(?:W(?:A(?:R(?:N(?:I(?:N(?:G(?::.*)?)?)?)?)?)?)?|T(?:o(?: .*)?)?|[IWE](?:\d.*)?)$")


class UserError(Exception):
    """Bad input from the user (a wrong path, a malformed file, a bad flag value): one line, exit 1."""


def verbose_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return (os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "False")
            or any(arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for arg in argv))


def is_noise(line: bytes) -> bool:
    """True for a TensorFlow start-up notice (one line, without its newline) that quiet mode drops."""
    return _NOISE.match(line.rstrip(b"\r")) is not None


class _StderrFilter:
    """Copies fd 2 through a pipe to the real stderr, dropping noise lines (a daemon thread; flushed at exit)."""

    def __init__(self):
        self.target = os.dup(2)
        read_end, write_end = os.pipe()
        sys.stderr.flush()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.read_end = read_end
        self.thread = threading.Thread(target=self._pump, name="bertsuite-stderr-filter", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def _write(self, data: bytes) -> None:
        while data:
            written = os.write(self.target, data)
            data = data[written:]

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.read_end, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_noise(line))
            if pending and not _MAYBE_NOISE.match(pending.rsplit(b"\r", 1)[-1]):
                kept, pending = kept + pending, b""
            if kept:
                self._write(kept)
        if pending and not is_noise(pending):
            self._write(pending)
        os.close(self.read_end)

    def close(self) -> None:
        """Restores fd 2 and lets the thread forward what is left."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.target, 2)  # the pipe's last write end closes: the thread sees end of file
        self.thread.join(timeout=2)  # a forked child still holding the pipe must not hold up the exit
        os.close(self.target)


_filter: _StderrFilter | None = None


def quiet_tensorflow(argv: list[str] | None = None, filter_stderr: bool = True) -> None:
    """Hides TensorFlow's start-up notices unless verbose was asked for. Call before TensorFlow is imported.

    Sets TF_CPP_MIN_LOG_LEVEL=2 (C++ INFO and WARNING off once logging is initialised) and, with
    `filter_stderr`, drops the notices printed before that (see the module docstring).
    """
    global _filter
    if verbose_requested(argv):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if filter_stderr and _filter is None:
        try:
            _filter = _StderrFilter()
        except OSError:  # no usable fd 2 (e.g. closed): nothing to filter
            _filter = None


def error_exit(message: str, status: int = 1) -> None:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def _one_line(error: BaseException) -> str:
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    return " ".join(message.split()) or type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where an unknown flag or a bad value is one `error:` line and exit status 1."""
    from absl import flags

    if "verbose" not in flags.FLAGS:  # the switch of `verbose_requested`, accepted by every script
        argv = [argv[0]] + [arg for arg in argv[1:] if not re.fullmatch(r"--verbose(=\w+)?", arg)]
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        error_exit(f"{error} (see --helpshort)")


def run(main: Callable, argv: list[str] | None = None,
        user_errors: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)) -> None:
    """`absl.app.run(main)` where the user's mistakes end in one `error:` line and exit status 1.

    Caught: flag-parsing errors, `app.UsageError`, and `user_errors` raised by `main`.
    """
    from absl import app

    def guarded(args):
        try:
            return main(args)
        except (app.UsageError, *user_errors) as error:
            error_exit(_one_line(error))

    app.run(guarded, argv=argv, flags_parser=parse_flags)
