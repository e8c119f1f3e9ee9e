#!/usr/bin/env bash
# The published rt-polarity run of haradatm/nlp bert/metrics (results/train_dml-rt.log, its printed
# arguments): BERT-base uncased as bert-chainer npz, batch 16, eta 5e-5, weight decay 0.01, 100 epochs,
# evaluated on the test split each epoch; then the original's extraction and picture of the test split.
#   BERT=path/to/uncased_L-12_H-768_A-12 DATA=path/to/rt-polarity bash bert_dml/run_rt.sh [more train flags]
# GPU=0 trains on the first GPU (the published run used -g 0); the default -1 is the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BERT=${BERT:-BERT/uncased_L-12_H-768_A-12}
DATA=${DATA:-../shared/data/rt-polarity}
OUT=${OUT:-results_dml-2-rt}
GPU=${GPU:--1}
python -m bert_dml.train_dml -g "$GPU" -b 16 -l 5e-05 --weightdecay 0.01 -e 100 \
  --train "$DATA/04-train.txt" --eval "$DATA/04-test.txt" \
  --init_checkpoint "$BERT/arrays_bert_model.ckpt.npz" --bert_config_file "$BERT/bert_config.json" \
  --vocab_file "$BERT/vocab.txt" -o "$OUT" "$@" | tee "train_dml-rt.log"
python -m bert_dml.extruct_bert_metrics -g "$GPU" -b 64 --label "$OUT/labels.json" --model "$OUT" \
  --input "$DATA/04-test.txt" --init_checkpoint "$BERT/arrays_bert_model.ckpt.npz" \
  --bert_config_file "$BERT/bert_config.json" --vocab_file "$BERT/vocab.txt" > rt-dml-04-test.txt
python -m bert_dml.plot_features --input rt-dml-04-test.txt --output plot_rt-dml-04-test.png
