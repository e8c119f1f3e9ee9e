#!/usr/bin/env bash
# The published MLIT run (results/train_dml-mlit.log): the Kyoto University Japanese BERT
# (Japanese_L-12_H-768_A-12_E-30_BPE, bert-chainer npz) on pre-segmented recall reports, 16 labels.
# Words stay whole (bert_dml's default, as the original's tokenizer), lower-cased as the original.
#   BERT=path/to/Japanese_L-12_H-768_A-12_E-30_BPE DATA=path/to/mlit bash bert_dml/run_mlit.sh [more train flags]
NAME=mlit BERT=${BERT:-BERT/Japanese_L-12_H-768_A-12_E-30_BPE} DATA=${DATA:-datasets/mlit} \
  exec bash "$(dirname "${BASH_SOURCE[0]}")/run_published.sh" "$@"
