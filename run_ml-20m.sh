#!/usr/bin/env bash
# BERT4Rec on MovieLens-20M with the original repository's run_ml-20m.sh hyper-parameters (FeiSun/BERT4Rec):
# length 200, 20 predictions, masked_lm_prob 0.2, sliding window 0.5, dupe 10, mask_prob 1.0, dim 64,
# batch 256, 400000 steps, warm-up 100, lr 1e-4, and its signature. The pipeline is run_ml-1m.sh's.
# Data: $DATA_DIR/ml-20m.txt (`user item` lines in time order); without it, put ml-20m.zip from GroupLens (downloaded when the network allows).
# Override anything from the environment, e.g. NUM_TRAIN_STEPS=20000 ./run_ml-20m.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export DATASET=ml-20m
export MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-200}"
export MAX_PREDICTIONS_PER_SEQ="${MAX_PREDICTIONS_PER_SEQ:-20}"
export MASKED_LM_PROB="${MASKED_LM_PROB:-0.2}"
export PROP_SLIDING_WINDOW="${PROP_SLIDING_WINDOW:-0.5}"
export DUPE_FACTOR="${DUPE_FACTOR:-10}"
export MASK_PROB="${MASK_PROB:-1.0}"
export DIM="${DIM:-64}"
export BATCH_SIZE="${BATCH_SIZE:-256}"
export NUM_TRAIN_STEPS="${NUM_TRAIN_STEPS:-400000}"
export NUM_WARMUP_STEPS="${NUM_WARMUP_STEPS:-100}"
export LEARNING_RATE="${LEARNING_RATE:-1e-4}"
export SIGNATURE="${SIGNATURE:--mp1.0-sw0.5-mlp0.2-df10-mpps20-msl200-fin}"
exec ./run_ml-1m.sh
