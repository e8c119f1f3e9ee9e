r"""Train and evaluate BERT4Rec with the original repository's command line.

    python -m bert4rec.run --train_input_file=... --test_input_file=... --vocab_filename=... \
        --user_history_filename=... --checkpointDir=... --signature=... --do_train --do_eval \
        --bert_config_file=bert4rec/bert_train/bert_config_ml-1m_64.json ...

As in the original, checkpoints go to `checkpointDir + signature`. Evaluation prints the original's
metric line once per protocol and writes them all to `<checkpointDir><signature>/eval_results.json`.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file, `python bert4rec/run.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

if __name__ == "__main__":  # a script, not a library import (tests import recommend())
    cli.quiet_tensorflow()

from absl import app, flags, logging  # noqa: E402

from common.distribute import define_strategy_flags, is_chief, strategy_from_flags  # noqa: E402

FLAGS = flags.FLAGS

# The original's flags, same names, meanings and defaults.
flags.DEFINE_string("bert_config_file", None, "bert_config.json of the model.")
flags.DEFINE_string("train_input_file", None, "Training TFRecords (glob or comma-separated).")
flags.DEFINE_string("test_input_file", None, "Test TFRecords (glob or comma-separated).")
flags.DEFINE_string("checkpointDir", None, "Checkpoint directory; the signature is appended to it.")
flags.DEFINE_string("signature", "default", "Signature appended to checkpointDir.")
flags.DEFINE_string("init_checkpoint", None, "Google-format checkpoint to start from (optional).")
flags.DEFINE_integer("max_seq_length", 128, "Must match data generation.")
flags.DEFINE_integer("max_predictions_per_seq", 20, "Must match data generation.")
flags.DEFINE_bool("do_train", False, "Whether to run training.")
flags.DEFINE_bool("do_eval", False, "Whether to evaluate on the test set.")
flags.DEFINE_integer("batch_size", 32, "Global batch size (training and evaluation).")
flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate of AdamW.")
flags.DEFINE_integer("num_train_steps", 100000, "Number of training steps.")
flags.DEFINE_integer("num_warmup_steps", 10000, "Number of linear warm-up steps.")
flags.DEFINE_integer("save_checkpoints_steps", 1000, "How often to save a checkpoint.")
flags.DEFINE_integer("iterations_per_loop", 10, "Training steps per tf.function call.")
flags.DEFINE_integer("max_eval_steps", 1000, "Accepted for compatibility; evaluation covers every user.")
flags.DEFINE_bool("use_pop_random", True, "Original: popularity (True) or uniform (False) negatives; "
                  "decides which protocol is reported first.")
flags.DEFINE_string("vocab_filename", None, "The .vocab file written by gen_data_fin.py.")
flags.DEFINE_string("user_history_filename", None, "The .his file written by gen_data_fin.py.")
flags.DEFINE_bool("use_tpu", False, "Original flag: same as --strategy=tpu.")
flags.DEFINE_string("tpu_name", None, "Original flag: same as --tpu.")
# Ours.
flags.DEFINE_enum("model", "bert4rec", ["bert4rec", "cross_attention"], "Model variant.")
flags.DEFINE_enum("cross_attention_yy", "kk", ["kk", "qq"],
                  "Third cross-attention term: kk (as described) or qq (the variant's code).")
flags.DEFINE_list("eval_protocol", ["pop100", "uni100", "full"],
                  "Protocols: popN (popularity negatives, the paper's), uniN (uniform), full (all items).")
flags.DEFINE_bool("exclude_history", True,
                  "Exclude the user's whole history from negatives (false: only the input window, "
                  "as the original did under Python 3).")
flags.DEFINE_integer("eval_every_steps", None,
                     "Also rank the test users every N training steps (--eval_every_protocol) and print the "
                     "original's line; kept in <checkpointDir><signature>/eval_history.json.")
flags.DEFINE_list("eval_every_protocol", ["pop100"], "Protocols of the evaluations during training.")
flags.DEFINE_integer("random_seed", 12345, "Seed of initialisation, data order and negatives.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_integer("length_buckets", None,
                     "Encode each training batch in this many groups of similar history length, each cut to "
                     "its longest history: same loss and gradients, less attention over padding (1: one "
                     "group; 0: no cutting; TPU always uses 0; default: bert4rec.model.LENGTH_BUCKETS, 8).")
define_strategy_flags()


def check_input_files(pattern_flags) -> None:
    """A missing input file is one clear line now, not a traceback minutes later."""
    import glob

    for name in pattern_flags:
        value = FLAGS[name].value
        if not value:
            continue
        for part in (piece.strip() for piece in value.split(",")):
            if part and not glob.glob(part):
                raise cli.UserError(f"--{name}: {part}: no such file")


def main(argv):
    del argv
    from bert4rec import experiment

    if not FLAGS.do_train and not FLAGS.do_eval:
        raise app.UsageError("At least one of --do_train or --do_eval must be set.")
    for name in ("bert_config_file", "checkpointDir", "vocab_filename", "user_history_filename"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    check_input_files(["bert_config_file", "vocab_filename", "user_history_filename"]
                      + (["train_input_file"] if FLAGS.do_train else [])
                      + (["test_input_file"] if FLAGS.do_eval else []))
    for name in ("batch_size", "max_seq_length", "max_predictions_per_seq", "save_checkpoints_steps",
                 "iterations_per_loop", "num_train_steps"):
        if FLAGS[name].value < 1:
            raise cli.UserError(f"--{name} must be >= 1, got {FLAGS[name].value}")
    if FLAGS.length_buckets is not None and FLAGS.length_buckets < 0:
        raise cli.UserError(f"--length_buckets must be >= 0, got {FLAGS.length_buckets}")
    if FLAGS.eval_every_steps is not None and FLAGS.eval_every_steps < 1:
        raise cli.UserError(f"--eval_every_steps must be >= 1, got {FLAGS.eval_every_steps}")
    if FLAGS.eval_every_steps and not FLAGS.test_input_file:
        raise cli.UserError("--eval_every_steps needs --test_input_file")
    if FLAGS.eval_every_steps:
        check_input_files(["test_input_file"])
    if FLAGS.use_tpu:
        FLAGS.strategy, FLAGS.tpu = "tpu", FLAGS.tpu or FLAGS.tpu_name
    model_dir = FLAGS.checkpointDir + FLAGS.signature
    print("checkpointDir:", model_dir, flush=True)

    strategy = strategy_from_flags(FLAGS)
    settings = experiment.RunSettings(
        bert_config_file=FLAGS.bert_config_file, vocab_filename=FLAGS.vocab_filename,
        user_history_filename=FLAGS.user_history_filename, max_seq_length=FLAGS.max_seq_length,
        max_predictions_per_seq=FLAGS.max_predictions_per_seq, model=FLAGS.model,
        cross_attention_yy=FLAGS.cross_attention_yy)

    model, train_result = None, None
    if FLAGS.do_train:
        if not FLAGS.train_input_file:
            raise app.UsageError("--train_input_file is required with --do_train")
        model, train_result = experiment.run_training(
            strategy, settings, FLAGS.train_input_file, model_dir, batch_size=FLAGS.batch_size,
            num_train_steps=FLAGS.num_train_steps, num_warmup_steps=FLAGS.num_warmup_steps,
            learning_rate=FLAGS.learning_rate, save_checkpoints_steps=FLAGS.save_checkpoints_steps,
            steps_per_execution=FLAGS.iterations_per_loop, random_seed=FLAGS.random_seed,
            init_checkpoint=FLAGS.init_checkpoint, progress=FLAGS.progress,
            eval_every_steps=FLAGS.eval_every_steps, eval_input_file=FLAGS.test_input_file,
            eval_protocols=FLAGS.eval_every_protocol, exclude_history=FLAGS.exclude_history,
            eval_batch_size=FLAGS.batch_size, length_buckets=FLAGS.length_buckets)

    if FLAGS.do_eval and is_chief(strategy):
        test_file = FLAGS.test_input_file or FLAGS.train_input_file
        protocols = list(FLAGS.eval_protocol)
        if not FLAGS.use_pop_random:  # the original's uniform mode: report uniform first
            protocols.sort(key=lambda name: not name.startswith("uni"))
        if model is None:
            model, checkpoint_path = experiment.restore_model(model_dir, settings)
            logging.info("evaluating %s", checkpoint_path)
        results = experiment.run_evaluation(
            model, settings, test_file, batch_size=FLAGS.batch_size, protocols=protocols,
            exclude_history=FLAGS.exclude_history, random_seed=FLAGS.random_seed,
            progress=FLAGS.progress)
        extra = {"flags": {name: FLAGS[name].value for name in (
            "bert_config_file", "test_input_file", "signature", "max_seq_length", "model",
            "cross_attention_yy", "exclude_history", "random_seed", "num_train_steps", "batch_size",
            "learning_rate", "mixed_precision", "strategy")}}
        if train_result is not None:
            extra["train"] = {"final_step": train_result.final_step,
                              "steps_per_second": train_result.steps_per_second}
        path = experiment.report_evaluation(
            results, model_dir, extra,
            summary_step=train_result.final_step if train_result else None)
        logging.info("wrote %s", path)


def user_errors() -> tuple:
    from bert4rec.data import DataError
    from common.checkpoints import CheckpointMismatchError
    from common.config import BertConfigError

    return (cli.UserError, FileNotFoundError, DataError, BertConfigError, CheckpointMismatchError)


if __name__ == "__main__":
    cli.run(main, user_errors=user_errors())
