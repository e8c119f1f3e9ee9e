"""Imported by this package's scripts only when run as files (`python bert_dml/<script>.py`), where Python puts
the package folder first on the path: this checkout's root takes its place, so `import bert_dml` and `import
common` find this checkout (not an installed copy) and the package's modules shadow no top-level names."""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_here)] + [entry for entry in sys.path if os.path.abspath(entry or ".") != _here]
