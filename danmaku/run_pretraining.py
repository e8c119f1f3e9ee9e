r"""Continue pre-training BERT (masked LM + next sentence) on danmaku, with Google BERT's command line.

    python -m danmaku.run_pretraining --input_file=data/train.tfrecord --eval_input_file=data/eval.tfrecord \
        --output_dir=danmaku_model --do_train --do_eval \
        --bert_config_file=chinese_L-12_H-768_A-12/bert_config.json \
        --init_checkpoint=chinese_L-12_H-768_A-12/bert_model.ckpt \
        --train_batch_size=2048 --max_seq_length=128 --max_predictions_per_seq=20 \
        --num_train_steps=12000 --num_warmup_steps=1200 --learning_rate=2e-5 --use_tpu --tpu_name=...

`--init_checkpoint` may also be a Hugging Face / keras-hub folder or an earlier output folder;
without it the model starts from scratch. Add `--strategy=mirrored` for all local GPUs and
`--mixed_precision=bfloat16|float16`. See `danmaku/README.md`.
"""

from __future__ import annotations

import os

if __package__ in (None, ""):  # run as a file, `python danmaku/run_pretraining.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags, logging  # noqa: E402

from common.cli import UserError  # noqa: E402
from common.distribute import define_strategy_flags, strategy_from_flags  # noqa: E402

FLAGS = flags.FLAGS

# Google's run_pretraining.py flags: same names, meanings and defaults.
flags.DEFINE_string("bert_config_file", None, "bert_config.json of the pre-trained model (default: the one "
                    "beside --init_checkpoint or in --output_dir).")
flags.DEFINE_string("input_file", None, "Input TFRecord file(s): comma-separated files or globs.")
flags.DEFINE_string("output_dir", None, "Where checkpoints, the model folder and eval results are written.")
flags.DEFINE_string("init_checkpoint", None, "Initial checkpoint: Google (prefix or folder), Hugging Face / "
                    "keras-hub folder, or an earlier output_dir. None: from scratch.")
flags.DEFINE_integer("max_seq_length", 128, "Must match the data generation.")
flags.DEFINE_integer("max_predictions_per_seq", 20, "Must match the data generation.")
flags.DEFINE_bool("do_train", False, "Whether to run training.")
flags.DEFINE_bool("do_eval", False, "Whether to run eval.")
flags.DEFINE_integer("train_batch_size", 32, "Total batch size for training.")
flags.DEFINE_integer("eval_batch_size", 8, "Total batch size for eval.")
flags.DEFINE_float("learning_rate", 5e-5, "The initial learning rate for Adam.")
flags.DEFINE_integer("num_train_steps", 100000, "Number of training steps.")
flags.DEFINE_integer("num_warmup_steps", 10000, "Number of warmup steps.")
flags.DEFINE_integer("save_checkpoints_steps", 1000, "How often to save the model checkpoint.")
flags.DEFINE_integer("iterations_per_loop", 1000, "Steps per compiled call (Google: per TPU loop).")
flags.DEFINE_integer("max_eval_steps", 100, "Maximum number of eval steps.")
flags.DEFINE_bool("use_tpu", False, "Whether to use TPU (same as --strategy=tpu).")
flags.DEFINE_string("tpu_name", None, "The Cloud TPU to use (same as --tpu).")
flags.DEFINE_string("master", None, "[Optional] TensorFlow master URL: with --use_tpu and no --tpu_name, the TPU's "
                    "grpc:// address.")
flags.DEFINE_integer("num_tpu_cores", 8, "Only used if use_tpu is True. Total number of TPU cores to use (the "
                     "TPU strategy uses every core of the TPU; a different count is reported).")
# Ours.
flags.DEFINE_string("eval_input_file", None, "Held-out TFRecords for --do_eval (default: --input_file, "
                    "as Google's script).")
flags.DEFINE_string("vocab_file", None, "vocab.txt copied into output_dir (default: the one beside "
                    "--init_checkpoint or --bert_config_file).")
flags.DEFINE_integer("eval_every_steps", None, "Also evaluate on the eval data every N training steps.")
flags.DEFINE_integer("random_seed", 12345, "Seed of initialisation and data order.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
define_strategy_flags()  # --strategy --num_gpus --tpu --tpu_zone --gcp_project --mixed_precision


def main(argv):
    del argv
    import keras

    from danmaku.pretraining import PretrainingSettings, format_table, run_pretraining

    for name in ("input_file", "output_dir"):
        if not FLAGS[name].value:
            raise UserError(f"--{name} is required")
    from danmaku.pretraining import check_tpu_cores, tpu_address

    if FLAGS.use_tpu:
        FLAGS.strategy, FLAGS.tpu = "tpu", tpu_address(FLAGS.tpu, FLAGS.tpu_name, FLAGS.master)
    keras.utils.set_random_seed(FLAGS.random_seed)
    strategy = strategy_from_flags(FLAGS)
    if FLAGS.use_tpu:
        check_tpu_cores(strategy.num_replicas_in_sync, FLAGS.num_tpu_cores)
    settings = PretrainingSettings(**{field: FLAGS[field].value for field in (
        "input_file", "output_dir", "bert_config_file", "init_checkpoint", "eval_input_file", "vocab_file",
        "train_batch_size", "eval_batch_size", "max_seq_length", "max_predictions_per_seq", "num_train_steps",
        "num_warmup_steps", "learning_rate", "save_checkpoints_steps", "iterations_per_loop", "max_eval_steps",
        "eval_every_steps", "do_train", "do_eval", "random_seed", "progress")})
    result = run_pretraining(strategy, settings)
    if result["rows"]:
        eval_row = result["rows"].get("eval")
        if eval_row:
            logging.info("***** Eval results *****")
            for key in sorted(eval_row):
                logging.info("  %s = %s", key, eval_row[key])
        print(format_table(result["rows"]), flush=True)
        print(f"wrote {FLAGS.output_dir.rstrip('/')}/eval_results.txt", flush=True)


if __name__ == "__main__":
    cli.run(main)
