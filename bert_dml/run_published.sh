#!/usr/bin/env bash
# One of the published runs of haradatm/nlp bert/metrics (their logs' printed arguments): batch 16,
# eta 5e-5, weight decay 0.01, 100 epochs, eval on the test split each epoch; then the original's
# extraction and picture of the test split. Called by run_rt.sh / run_mlit.sh with NAME, BERT, DATA.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${NAME:?}" "${BERT:?}" "${DATA:?}"
OUT=${OUT:-results_dml-2-$NAME}
GPU=${GPU:--1}
MODEL=(--init_checkpoint "$BERT/arrays_bert_model.ckpt.npz" --bert_config_file "$BERT/bert_config.json"
       --vocab_file "$BERT/vocab.txt")
python -m bert_dml.train_dml -g "$GPU" -b 16 -l 5e-05 --weightdecay 0.01 -e 100 \
  --train "$DATA/04-train.txt" --eval "$DATA/04-test.txt" "${MODEL[@]}" -o "$OUT" "$@" | tee "train_dml-$NAME.log"
python -m bert_dml.extruct_bert_metrics -g "$GPU" -b 64 --label "$OUT/labels.json" --model "$OUT" \
  --input "$DATA/04-test.txt" "${MODEL[@]}" > "$NAME-dml-04-test.txt"
python -m bert_dml.plot_features --input "$NAME-dml-04-test.txt" --output "plot_$NAME-dml-04-test.png"
