#!/usr/bin/env bash
# The published MLIT run of haradatm/nlp bert/metrics (results/train_dml-mlit.log, its printed
# arguments): the Kyoto University Japanese BERT (Japanese_L-12_H-768_A-12_E-30_BPE, bert-chainer npz)
# on pre-segmented recall reports (16 labels), batch 16, eta 5e-5, weight decay 0.01, 100 epochs; then
# the original's extraction and picture of the test split. Words stay whole (--notokenize_chinese_chars,
# bert_dml's default, as the original's tokenizer), lower-cased as the original (do_lower_case=True).
#   BERT=path/to/Japanese_L-12_H-768_A-12_E-30_BPE DATA=path/to/mlit bash bert_dml/run_mlit.sh [more train flags]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BERT=${BERT:-BERT/Japanese_L-12_H-768_A-12_E-30_BPE}
DATA=${DATA:-datasets/mlit}
OUT=${OUT:-results_dml-2-mlit}
GPU=${GPU:--1}
python -m bert_dml.train_dml -g "$GPU" -b 16 -l 5e-05 --weightdecay 0.01 -e 100 \
  --train "$DATA/04-train.txt" --eval "$DATA/04-test.txt" \
  --init_checkpoint "$BERT/arrays_bert_model.ckpt.npz" --bert_config_file "$BERT/bert_config.json" \
  --vocab_file "$BERT/vocab.txt" -o "$OUT" "$@" | tee "train_dml-mlit.log"
python -m bert_dml.extruct_bert_metrics -g "$GPU" -b 64 --label "$OUT/labels.json" --model "$OUT" \
  --input "$DATA/04-test.txt" --init_checkpoint "$BERT/arrays_bert_model.ckpt.npz" \
  --bert_config_file "$BERT/bert_config.json" --vocab_file "$BERT/vocab.txt" > mlit-dml-04-test.txt
python -m bert_dml.plot_features --input mlit-dml-04-test.txt --output plot_mlit-dml-04-test.png
