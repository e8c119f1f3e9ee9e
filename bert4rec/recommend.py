r"""Top-k next items for a history, from a trained BERT4Rec checkpoint directory.

    python -m bert4rec.recommend --checkpointDir=output/BERT4Rec/ml-100k<signature> \
        --history="12 7 301" --top_k=10

History items are the dataset's own item ids (as in `<dataset>.txt`), oldest first. Items of the
history are never recommended (`--exclude_history=false`: only those of the model's input window).
Titles are shown where the dataset has them: `<dataset>.titles.json` beside the vocabulary (written for
MovieLens from `u.item` / `movies.dat`), or any JSON object of item id -> title given with
`--titles_file=movie_title_by_index.json`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

if __package__ in (None, ""):  # run as a file, `python bert4rec/recommend.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

if __name__ == "__main__":  # a script, not a library import (tests import recommend())
    cli.quiet_tensorflow()

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402


@dataclasses.dataclass
class Recommendation:
    rank: int
    item: int
    score: float
    title: str | None = None


def encode_history(history_model_ids, max_seq_length: int, mask_id: int) -> dict:
    """One test-style instance: the last max_seq_length - 1 items, then [MASK]; right-padded like the TFRecords."""
    items = list(history_model_ids)[-(max_seq_length - 1):] + [mask_id]
    input_ids = np.zeros((1, max_seq_length), np.int32)
    input_ids[0, :len(items)] = items
    return {"input_ids": input_ids, "input_mask": (input_ids > 0).astype(np.int32),
            "masked_lm_positions": np.array([[len(items) - 1]], np.int32)}


def recommend(model, vocab, history_items, max_seq_length: int, top_k: int = 10,
              exclude_history: bool = True, titles: dict | None = None) -> list[Recommendation]:
    """Top-k original item ids for a history of original item ids (unknown items raise KeyError).

    `exclude_history`: True never recommends an item of the history; False only the items of the model's
    input window (the last max_seq_length - 1), the same meaning as run.py's `--exclude_history`.
    """
    if not len(history_items):
        raise ValueError("the history is empty: give at least one item")
    history_ids = vocab.to_model_ids(history_items)
    features = encode_history(history_ids, max_seq_length, vocab.mask_id)
    scores = np.asarray(model.next_item_logits(features))[0].astype(np.float64)
    eligible = np.zeros(scores.shape[0], bool)
    eligible[1:vocab.num_items + 1] = True  # real items only: no padding, [MASK] or unused ids
    eligible[history_ids if exclude_history else history_ids[-(max_seq_length - 1):]] = False
    scores = np.where(eligible, scores, -np.inf)
    top_k = min(top_k, int(eligible.sum()))
    best = np.argsort(-scores, kind="stable")[:top_k]
    items = vocab.to_original_items(best)
    titles = titles or {}
    return [Recommendation(rank=rank, item=int(item), score=float(scores[model_id]),
                           title=titles.get(str(int(item))))
            for rank, (item, model_id) in enumerate(zip(items, best), start=1)]


def find_titles_file(vocab_filename: str) -> str | None:
    """`<dataset>.titles.json` beside the vocabulary whose name starts the vocabulary's name."""
    directory, name = os.path.split(os.path.abspath(vocab_filename))
    candidates = [path for path in glob.glob(os.path.join(directory, "*.titles.json"))
                  if name.startswith(os.path.basename(path)[:-len(".titles.json")])]
    return max(candidates, key=len) if candidates else None


def load_titles(path: str | None) -> dict:
    """{item id (str): title} from a JSON object of item id -> title, e.g. `<dataset>.titles.json` written for
    MovieLens from `u.item` / `movies.dat`, or a release's `movie_title_by_index.json`, for any dataset."""
    if not path:
        return {}
    if not os.path.isfile(path):
        raise cli.UserError(f"--titles_file: {path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except json.JSONDecodeError as error:
        raise cli.UserError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    except UnicodeDecodeError:
        raise cli.UserError(f"{path}:1: not UTF-8 text") from None
    if not isinstance(value, dict):
        raise cli.UserError(f"{path}:1: expected a JSON object of item id -> title")
    return {str(key).strip(): str(title) for key, title in value.items()}


def parse_history(text: str) -> list[int]:
    try:
        items = [int(token) for token in text.replace(",", " ").split()]
    except ValueError:
        raise cli.UserError(f"--history must be item ids separated by spaces or commas, got {text!r}") from None
    if not items:
        raise cli.UserError("--history is empty: give at least one item id")
    return items


FLAGS = flags.FLAGS
flags.DEFINE_string("checkpointDir", None, "Checkpoint directory of bert4rec/run.py (with its signature).")
flags.DEFINE_string("signature", "", "Appended to --checkpointDir, as in run.py.")
flags.DEFINE_string("history", None, "The user's items, oldest first, e.g. \"12 7 301\".")
flags.DEFINE_integer("top_k", 10, "How many items to recommend.")
flags.DEFINE_bool("exclude_history", True, "Never recommend items of the history (false: only those of the "
                  "model's input window, the last max_seq_length - 1 items, as in run.py).")
flags.DEFINE_string("titles_file", None, "JSON item id -> title (default: found beside the vocabulary).")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def main(argv):
    del argv
    from bert4rec import data as bert4rec_data
    from bert4rec.experiment import RunSettings, restore_model

    if not FLAGS.checkpointDir or FLAGS.history is None:
        raise app.UsageError("--checkpointDir and --history are required")
    if FLAGS.top_k < 1:
        raise cli.UserError(f"--top_k must be >= 1, got {FLAGS.top_k}")
    history = parse_history(FLAGS.history)  # bad input fails before the model loads
    model_dir = FLAGS.checkpointDir + FLAGS.signature
    if not os.path.isdir(model_dir):
        raise cli.UserError(f"--checkpointDir: {model_dir}: no such directory (give run.py's checkpointDir "
                            f"+ signature, e.g. ./output/BERT4Rec/ml-100k<signature>)")
    settings = RunSettings.load(model_dir)
    titles = load_titles(FLAGS.titles_file or find_titles_file(settings.vocab_filename))
    model, checkpoint_path = restore_model(model_dir, settings)
    vocab = bert4rec_data.load_vocab(settings.vocab_filename)
    try:
        recommendations = recommend(model, vocab, history, settings.max_seq_length,
                                    FLAGS.top_k, FLAGS.exclude_history, titles)
    except KeyError as error:
        raise cli.UserError(f"--history: {error.args[0] if error.args else error}") from None
    if FLAGS.json:
        print(json.dumps({"checkpoint": checkpoint_path,
                          "recommendations": [dataclasses.asdict(r) for r in recommendations]}))
        return
    print(f"# top {len(recommendations)} from {checkpoint_path}")
    for entry in recommendations:
        title = f"  {entry.title}" if entry.title else ""
        print(f"{entry.rank:>3}  item {entry.item:<7} score {entry.score:8.3f}{title}")


if __name__ == "__main__":
    from bert4rec.data import DataError
    from common.checkpoints import CheckpointMismatchError
    from common.config import BertConfigError

    cli.run(main, user_errors=(cli.UserError, FileNotFoundError, DataError, BertConfigError, CheckpointMismatchError))
