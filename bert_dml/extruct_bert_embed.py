"""The original `extruct_bert_embed.py`: `bert_dml.extract_features --kind=embed` (same flags)."""

import os
import sys

if __package__ in (None, ""):  # run as a file: `python bert_dml/extruct_bert_embed.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bert_dml import extract_features  # noqa: E402

if __name__ == "__main__":
    extract_features.run_as("embed")
