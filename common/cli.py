"""What every command-line script of the suite shares: a quiet TensorFlow and one `error:` line for bad input.

Use it as the first import of a script, before anything imports TensorFlow:

    from common import cli
    cli.quiet_tensorflow()
    ...
    if __name__ == "__main__":
        cli.run(main)          # absl flags parsed, UsageError/UserError -> "error: ..." and exit 1

`BERTSUITE_VERBOSE=1` (or `--verbose` where a script defines it) brings TensorFlow's own lines back.
"""

from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user (a wrong path, a malformed file, a bad flag value): one line, exit 1."""


def verbose_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return os.environ.get("BERTSUITE_VERBOSE", "") not in ("", "0") or "--verbose" in argv


def quiet_tensorflow(argv: list[str] | None = None) -> None:
    """Hides TensorFlow's C++ notices (cuInit on CPU-only machines, oneDNN) unless verbose was asked for.

    Must run before TensorFlow is imported; harmless afterwards.
    """
    if verbose_requested(argv):
        return
    # 2 hides INFO and WARNING of TensorFlow's C++ logging; real Python warnings still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def error_exit(message: str, status: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def run(main: Callable, argv: list[str] | None = None,
        user_errors: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)) -> None:
    """`absl.app.run(main)` where the user's mistakes end in one `error:` line and exit status 1."""
    from absl import app

    def guarded(args):
        try:
            return main(args)
        except user_errors as error:
            message = str(error)
            if isinstance(error, FileNotFoundError) and error.filename and error.filename not in message:
                message = f"{message}: {error.filename}"
            error_exit(message)

    app.run(guarded, argv=argv)
