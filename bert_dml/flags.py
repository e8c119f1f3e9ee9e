"""The original BERT-DML command-line flags, shared by `train_dml` and `train_cls`."""

from __future__ import annotations

from absl import flags

from common.distribute import define_strategy_flags


def define_gpu_flag() -> None:
    """The original's `--gpu/-g`, one meaning in every script: -1 (default) hides the GPUs (CPU only, as
    the original); N >= 0 keeps them visible (TensorFlow places work on them; --strategy spreads it)."""
    flags.DEFINE_integer("gpu", -1, "-1: CPU only (the original's default); >= 0: use the visible GPUs.",
                         short_name="g")


def apply_gpu_flag(gpu: int) -> None:
    """Hides the GPUs for --gpu < 0 (call before TensorFlow touches a device)."""
    if gpu < 0:
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")


def define_training_flags(default_out: str, default_epochs: int) -> None:
    # The original's flags, names and defaults.
    define_gpu_flag()
    flags.DEFINE_integer("batchsize", 64, "Mini-batch size (triplets for train_dml, sentences for train_cls).",
                         short_name="b")
    flags.DEFINE_float("learnrate", 5e-5, "Learning rate (Chainer's eta) of epoch 1; lowered linearly to 0 "
                       "epoch by epoch.", short_name="l")
    flags.DEFINE_float("weightdecay", 0.01, "Weight decay rate (matrices only: not on LayerNorm or biases).")
    flags.DEFINE_integer("epoch", default_epochs, "Number of epochs.", short_name="e")
    flags.DEFINE_string("train", None, "Training file: label<TAB>text lines.")
    flags.DEFINE_string("eval", None, "Evaluation file: label<TAB>text lines.")
    flags.DEFINE_string("init_checkpoint", None,
                        "Pre-trained weights: a Google checkpoint, bert-chainer arrays_bert_model.ckpt.npz, "
                        "or a model folder of ours.")
    flags.DEFINE_string("bert_config_file", None, "bert_config.json of the model (its size when from scratch).")
    flags.DEFINE_string("vocab_file", None, "vocab.txt the model was trained with (learnt from --train when "
                        "there is no checkpoint and no --vocab_file).")
    flags.DEFINE_string("out", default_out, "Output folder (model, log.json, loss.png, TensorBoard).",
                        short_name="o")
    flags.DEFINE_string("resume", None, "A folder of an earlier run to continue (its newest checkpoint).")
    flags.DEFINE_integer("start_epoch", 1, "Epoch to start at when resuming (checked against the checkpoint).")
    flags.DEFINE_boolean("noplot", False, "Do not draw the loss plot.")
    # Ours.
    flags.DEFINE_string("preset", None, "A local keras-hub / Hugging Face / Google BERT folder to start from.")
    flags.DEFINE_string("encoding", "utf-8", "Encoding of --train and --eval (e.g. cp1252).")
    flags.DEFINE_integer("max_seq_length", None, "Longest input in wordpieces, [CLS] and [SEP] included "
                         "(default: the model's max_position_embeddings, as the original).")
    flags.DEFINE_integer("random_seed", 123, "Seed of sampling and shuffling.")
    flags.DEFINE_integer("vocab_size", 8000, "Size of the vocabulary learnt from --train (from scratch only).")
    flags.DEFINE_boolean("do_lower_case", True, "Lower-case and strip accents (ignored with --preset, which "
                         "says itself); use --nodo_lower_case for Japanese trained from scratch.")
    flags.DEFINE_boolean("progress", True, "Show a progress bar.")
    flags.DEFINE_boolean("tokenize_chinese_chars", False, "Split CJK ideographs into single characters "
                         "(Google's BERT); off as the original's tokenizer: pre-segmented words stay whole.")
    flags.DEFINE_boolean("bias_correction", True, "Adam with Chainer's bias correction, as the original "
                         "(WeightDecayForMatrixAdam); --nobias_correction: Google BERT's AdamWeightDecay.")
    define_strategy_flags()


def common_kwargs(values) -> dict:
    """The flags as keyword arguments of `bert_dml.training.train_dml` / `train_classifier`."""
    return dict(batchsize=values.batchsize, epochs=values.epoch, learnrate=values.learnrate,
                weightdecay=values.weightdecay, preset=values.preset, init_checkpoint=values.init_checkpoint,
                bert_config_file=values.bert_config_file, vocab_file=values.vocab_file,
                encoding=values.encoding, max_seq_length=values.max_seq_length,
                random_seed=values.random_seed, vocab_size=values.vocab_size,
                lowercase=values.do_lower_case, noplot=values.noplot, resume=values.resume,
                start_epoch=values.start_epoch, progress=values.progress,
                bias_correction=values.bias_correction, tokenize_chinese_chars=values.tokenize_chinese_chars)
