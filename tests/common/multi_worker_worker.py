"""One worker of the two-worker MultiWorkerMirroredStrategy test (run with TF_CONFIG set), and the
tiny pre-training model and data that tests/common/test_training.py shares (it loads this file by path).

Usage: python multi_worker_worker.py --model_dir DIR --output RESULT.json --num_train_steps N
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common.config import BertConfig  # noqa: E402
from common.encoder import BertEncoder  # noqa: E402
from common.heads import BertPretrainer  # noqa: E402

VOCAB_SIZE = 30
SEQUENCE_LENGTH = 8
NUM_MASKED = 3


def tiny_pretrainer(seed: int = 0) -> BertPretrainer:
    """A one-block BERT with MLM + NSP heads and no dropout (build under strategy.scope())."""
    keras.utils.set_random_seed(seed)
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertPretrainer(BertEncoder(config))


def tiny_examples(num_examples: int, global_batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random pre-training examples. In each global batch the first half has all three MLM weights 1
    and the second half only one, so a per-replica mean loss would differ from the global one."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(NUM_MASKED + 2, SEQUENCE_LENGTH + 1, size=num_examples)
    positions = np.arange(SEQUENCE_LENGTH)
    input_mask = (positions[None, :] < lengths[:, None]).astype(np.int32)
    input_ids = rng.integers(1, VOCAB_SIZE, size=(num_examples, SEQUENCE_LENGTH)).astype(np.int32) * input_mask
    segment_ids = ((positions[None, :] >= lengths[:, None] // 2) * input_mask).astype(np.int32)
    masked_positions = np.stack([np.sort(rng.choice(np.arange(1, length), NUM_MASKED, replace=False))
                                 for length in lengths]).astype(np.int32)
    first_half = (np.arange(num_examples) % global_batch_size) < global_batch_size // 2
    weights = np.where(first_half[:, None], 1.0, np.array([1.0, 0.0, 0.0])).astype(np.float32)
    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": segment_ids,
        "masked_lm_positions": masked_positions,
        "masked_lm_ids": rng.integers(0, VOCAB_SIZE, size=(num_examples, NUM_MASKED)).astype(np.int32),
        "masked_lm_weights": weights,
        "next_sentence_labels": rng.integers(0, 2, size=(num_examples, 1)).astype(np.int32),
    }


def tiny_dataset_fn(examples: dict[str, np.ndarray], global_batch_size: int):
    """Repeats `examples` in order; step s trains on examples [s*G, (s+1)*G) (mod len) with one worker
    and any number of replicas, or with one replica per worker (replica k gets the k-th slice)."""
    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        dataset = tf.data.Dataset.from_tensor_slices(examples).repeat().batch(per_replica, drop_remainder=True)
        # Sharding whole batches keeps the global batch of a step the same contiguous examples.
        return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return dataset_fn


def main() -> None:
    from common.distribute import get_strategy, is_chief
    from common.optimization import create_optimizer
    from common.training import (BestCheckpoint, Trainer, TrainSettings, bert_pretraining_loss_fn, evaluate,
                                 flatten_results, skip_consumed_batches)

    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num_train_steps", type=int, default=6)
    parser.add_argument("--eval_every_steps", type=int, default=0,
                        help="> 0: evaluate (collectively) on 11 held-out examples, keep the best loss")
    args = parser.parse_args()

    global_batch_size = 8
    strategy = get_strategy("multi_worker")
    with strategy.scope():
        model = tiny_pretrainer(seed=0)
        optimizer = create_optimizer(1e-2, args.num_train_steps, num_warmup_steps=0, clip_norm=1.0)
    # One global batch repeated, so the loss must fall within a few steps.
    examples = tiny_examples(global_batch_size, global_batch_size)
    # 11 examples in batches of 4: the last global batch is partial.
    eval_dataset = tf.data.Dataset.from_tensor_slices(tiny_examples(11, global_batch_size, seed=1)).batch(4)
    settings = TrainSettings(model_dir=args.model_dir, num_train_steps=args.num_train_steps,
                             save_checkpoints_steps=2, log_every_steps=1, steps_per_execution=2, progress=False,
                             eval_every_steps=args.eval_every_steps or None)
    trainer = Trainer(strategy, model, optimizer, bert_pretraining_loss_fn, settings,
                      eval_fn=((lambda step: evaluate(strategy, model, eval_dataset, bert_pretraining_loss_fn))
                               if args.eval_every_steps else None),
                      callbacks=[BestCheckpoint("loss", "min")] if args.eval_every_steps else [])
    result = trainer.fit(skip_consumed_batches(tiny_dataset_fn(examples, global_batch_size)))
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    report = {
        "task_index": task["index"],
        "is_chief": is_chief(strategy),
        "num_replicas": strategy.num_replicas_in_sync,
        "final_step": result.final_step,
        "losses": result.losses,
        "eval_history": result.eval_history,
        "best_step": result.best["best"]["step"] if result.best else None,
        # The final model evaluated in this process alone, without the strategy.
        "reference_eval": (flatten_results(evaluate(tf.distribute.get_strategy(), model, eval_dataset,
                                                    bert_pretraining_loss_fn)) if args.eval_every_steps else None),
        "weights": {variable.path: variable.numpy().ravel().tolist() for variable in model.weights},
    }
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
