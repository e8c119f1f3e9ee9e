"""The original `extruct_bert_metrics.py`: `bert_dml.extract_features --kind=dml` (same flags)."""

if __package__ in (None, ""):  # run as a file, `python bert_dml/extruct_bert_metrics.py`
    import _run_as_file  # noqa: F401

from bert_dml import extract_features  # noqa: E402

if __name__ == "__main__":
    extract_features.run_as("dml")
