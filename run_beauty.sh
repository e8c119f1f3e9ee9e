#!/usr/bin/env bash
# BERT4Rec on Amazon Beauty with the original repository's run_beauty.sh hyper-parameters (FeiSun/BERT4Rec):
# length 50, 30 predictions, masked_lm_prob 0.6, sliding window 0.1, dupe 10, mask_prob 1.0, dim 64,
# batch 256, 400000 steps, warm-up 100, lr 1e-4, and its signature. The pipeline is run_ml-1m.sh's.
# Data: $DATA_DIR/beauty.txt (`user item` lines in time order); without it, put beauty.txt from https://raw.githubusercontent.com/FeiSun/BERT4Rec/master/data/beauty.txt.
# Override anything from the environment, e.g. NUM_TRAIN_STEPS=20000 ./run_beauty.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export DATASET=beauty
export MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-50}"
export MAX_PREDICTIONS_PER_SEQ="${MAX_PREDICTIONS_PER_SEQ:-30}"
export MASKED_LM_PROB="${MASKED_LM_PROB:-0.6}"
export PROP_SLIDING_WINDOW="${PROP_SLIDING_WINDOW:-0.1}"
export DUPE_FACTOR="${DUPE_FACTOR:-10}"
export MASK_PROB="${MASK_PROB:-1.0}"
export DIM="${DIM:-64}"
export BATCH_SIZE="${BATCH_SIZE:-256}"
export NUM_TRAIN_STEPS="${NUM_TRAIN_STEPS:-400000}"
export NUM_WARMUP_STEPS="${NUM_WARMUP_STEPS:-100}"
export LEARNING_RATE="${LEARNING_RATE:-1e-4}"
export SIGNATURE="${SIGNATURE:--mp1.0-sw0.1-mlp0.6-df10-mpps30-msl50}"
exec ./run_ml-1m.sh
