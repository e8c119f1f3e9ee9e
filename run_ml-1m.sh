#!/usr/bin/env bash
# BERT4Rec, the original two-step pipeline with the original's ml-1m hyper-parameters:
#   1. bert4rec/gen_data_fin.py writes masked TFRecords, vocabulary and histories to $DATA_DIR
#   2. bert4rec/run.py trains, then evaluates (pop100, uni100, full) and prints the original's line
# Every setting below can be overridden from the environment, e.g.
#   NUM_TRAIN_STEPS=20000 MIXED_PRECISION=bfloat16 ./run_ml-1m.sh
# MovieLens-1M is downloaded into $DATA_DIR when the network allows; otherwise put ml-1m.zip there.
# run_beauty.sh, run_steam.sh, run_ml-20m.sh and run_ml-100k.sh set their datasets' values and call this script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. .ci/venv.sh

DATASET="${DATASET:-ml-1m}"
DATA_DIR="${DATA_DIR:-./data}"
CKPT_DIR="${CKPT_DIR:-./output/BERT4Rec}"
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-200}"
MASKED_LM_PROB="${MASKED_LM_PROB:-0.2}"
MAX_PREDICTIONS_PER_SEQ="${MAX_PREDICTIONS_PER_SEQ:-40}"
DIM="${DIM:-64}"
BATCH_SIZE="${BATCH_SIZE:-256}"
NUM_TRAIN_STEPS="${NUM_TRAIN_STEPS:-400000}"
NUM_WARMUP_STEPS="${NUM_WARMUP_STEPS:-100}"
LEARNING_RATE="${LEARNING_RATE:-1e-4}"
PROP_SLIDING_WINDOW="${PROP_SLIDING_WINDOW:-0.5}"
MASK_PROB="${MASK_PROB:-1.0}"
DUPE_FACTOR="${DUPE_FACTOR:-10}"
LAST_ITEM_PASSES="${LAST_ITEM_PASSES:-1}"          # ours: the original writes one last-item pass
POOL_SIZE="${POOL_SIZE:-10}"
RANDOM_SEED="${RANDOM_SEED:-12345}"
MODEL="${MODEL:-bert4rec}"                       # or cross_attention
STRATEGY="${STRATEGY:-default}"                  # default | mirrored | multi_worker | tpu
MIXED_PRECISION="${MIXED_PRECISION:-none}"       # none | bfloat16 | float16
SAVE_CHECKPOINTS_STEPS="${SAVE_CHECKPOINTS_STEPS:-1000}"
ITERATIONS_PER_LOOP="${ITERATIONS_PER_LOOP:-20}"
BERT_CONFIG="${BERT_CONFIG:-bert4rec/bert_train/bert_config_${DATASET}_${DIM}.json}"

last_item_tag=""
[ "${LAST_ITEM_PASSES}" = 1 ] || last_item_tag="-li${LAST_ITEM_PASSES}"
signature="${SIGNATURE:--mp${MASK_PROB}-sw${PROP_SLIDING_WINDOW}-mlp${MASKED_LM_PROB}-df${DUPE_FACTOR}${last_item_tag}-mpps${MAX_PREDICTIONS_PER_SEQ}-msl${MAX_SEQ_LENGTH}-fin}"

python -u -m bert4rec.gen_data_fin \
    --dataset_name="${DATASET}" \
    --data_dir="${DATA_DIR}" \
    --output_dir="${DATA_DIR}" \
    --max_seq_length="${MAX_SEQ_LENGTH}" \
    --max_predictions_per_seq="${MAX_PREDICTIONS_PER_SEQ}" \
    --mask_prob="${MASK_PROB}" \
    --dupe_factor="${DUPE_FACTOR}" \
    --last_item_passes="${LAST_ITEM_PASSES}" \
    --masked_lm_prob="${MASKED_LM_PROB}" \
    --prop_sliding_window="${PROP_SLIDING_WINDOW}" \
    --signature="${signature}" \
    --pool_size="${POOL_SIZE}" \
    --random_seed="${RANDOM_SEED}"

python -u -m bert4rec.run \
    --train_input_file="${DATA_DIR}/${DATASET}${signature}.train.tfrecord" \
    --test_input_file="${DATA_DIR}/${DATASET}${signature}.test.tfrecord" \
    --vocab_filename="${DATA_DIR}/${DATASET}${signature}.vocab" \
    --user_history_filename="${DATA_DIR}/${DATASET}${signature}.his" \
    --checkpointDir="${CKPT_DIR}/${DATASET}" \
    --signature="${signature}-${DIM}-${MODEL}" \
    --do_train=True \
    --do_eval=True \
    --bert_config_file="${BERT_CONFIG}" \
    --batch_size="${BATCH_SIZE}" \
    --max_seq_length="${MAX_SEQ_LENGTH}" \
    --max_predictions_per_seq="${MAX_PREDICTIONS_PER_SEQ}" \
    --num_train_steps="${NUM_TRAIN_STEPS}" \
    --num_warmup_steps="${NUM_WARMUP_STEPS}" \
    --learning_rate="${LEARNING_RATE}" \
    --save_checkpoints_steps="${SAVE_CHECKPOINTS_STEPS}" \
    --iterations_per_loop="${ITERATIONS_PER_LOOP}" \
    --model="${MODEL}" \
    --strategy="${STRATEGY}" \
    --mixed_precision="${MIXED_PRECISION}" \
    --random_seed="${RANDOM_SEED}"
