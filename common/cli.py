"""What every command-line script of the suite shares: a quiet terminal and one `error:` line for bad input.

Use it as the first import of a script, before anything imports TensorFlow:

    from common import cli
    cli.quiet_tensorflow()
    ...
    if __name__ == "__main__":
        cli.run(main)          # absl flags parsed; bad flags, UsageError, UserError -> "error: ..." and exit 1

Quiet means TensorFlow's own switches: TF_CPP_MIN_LOG_LEVEL=2 (its C++ INFO and WARNING lines), gRPC at
ERROR, the `tensorflow` Python logger at WARNING, and the INFO lines TensorFlow's Python code logs through
absl dropped (`functional_saver.py:440] Sharding callback duration` at every checkpoint). Our own log lines
lose absl's `I1202 14:27:17.956832 140042538834816 training.py:559]` prefix: INFO lines are plain, others
read `warning: ...` / `error: ...`. TF_CPP_MIN_LOG_LEVEL does not reach what TensorFlow's C++ prints while
it loads (`oneDNN custom operations are on`, `Could not find cuda drivers`, `failed call to cuInit`, absl's
"All log messages before absl::InitializeLog()"), so the first `import tensorflow` writes file descriptor 2
into a temporary file, replayed without those notices once the import is done: no thread, nothing left
running. `--verbose` on the command line or `BERTSUITE_VERBOSE=1` leaves everything as TensorFlow prints it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import runpy
import sys
import tempfile
from typing import Callable, Iterator

VERBOSE_ENV = "BERTSUITE_VERBOSE"

# Start-up notices of TensorFlow's C++ runtime that say nothing wrong about the user's run.
_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\."
    rb"|[IWE]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_driver|cuda_diagnostics"
    rb"|cuda_executor|cuda_fft|cuda_dnn|cuda_blas|util|gpu_device|dso_loader)\.cc:\d+\] .*"
    rb"|I\d{4} [\d:.]+ +\d+ [\w.]+\.cc:\d+\] .*)$")  # any other C++ INFO line too


class UserError(Exception):
    """Bad input from the user (a wrong path, a malformed file, a bad flag value): one line, exit 1."""


def verbose_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return (os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "False")
            or any(arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for arg in argv))


def is_noise(line: bytes) -> bool:
    """True for a TensorFlow start-up notice (one line, without its newline) that quiet mode drops."""
    return _NOISE.match(line.rstrip(b"\r")) is not None


@contextlib.contextmanager
def startup_notices_dropped() -> Iterator[None]:
    """File descriptor 2 goes to a temporary file inside the block; its lines are then written to the real
    stderr without the start-up notices (`is_noise`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured.read().splitlines(keepends=True)
                            if not is_noise(line.rstrip(b"\n")))
            if kept:
                os.write(2, kept)


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run inside `startup_notices_dropped` together with the first device query
    (where `failed call to cuInit` is printed)."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with startup_notices_dropped():
            self.loader.exec_module(module)
            module.config.list_physical_devices()
        module.__loader__ = module.__spec__.loader = self.loader


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Hands the first `import tensorflow` to `_QuietLoader`, then leaves the import system as it was."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not self]
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class PlainFormatter(logging.Formatter):
    """Log lines as the user reads them: INFO plain, other levels `warning: ...` / `error: ...`."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"{record.levelname.lower()}: {text}"


def _not_tensorflow_info(record: logging.LogRecord) -> bool:
    """TensorFlow's Python code logs through absl too (`functional_saver.py:440] Sharding callback duration`):
    its INFO records are dropped, its warnings and every record of ours kept."""
    return record.levelno >= logging.WARNING or f"{os.sep}tensorflow{os.sep}" not in record.pathname


def quiet_tensorflow(argv: list[str] | None = None) -> None:
    """A quiet terminal (see the module docstring) unless verbose was asked for. Call before TensorFlow is
    imported; it does not import TensorFlow itself (scripts without it stay fast and free to fork)."""
    if verbose_requested(argv):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler()
    handler.setFormatter(PlainFormatter())
    if _not_tensorflow_info not in handler.filters:
        handler.addFilter(_not_tensorflow_info)
    if "tensorflow" not in sys.modules and not any(isinstance(finder, _QuietTensorFlowImport)
                                                   for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def module_command(module: str) -> Callable[[], None]:
    """A console-script entry point (setup.cfg) that runs `module` exactly as `python -m module` does."""

    def command() -> None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)

    command.__doc__ = f"python -m {module}"
    return command


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
