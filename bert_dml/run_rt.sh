#!/usr/bin/env bash
# The published rt-polarity run (results/train_dml-rt.log): BERT-base uncased as bert-chainer npz.
#   BERT=path/to/uncased_L-12_H-768_A-12 DATA=path/to/rt-polarity bash bert_dml/run_rt.sh [more train flags]
# GPU=0 trains on the GPUs (the published run used -g 0); the default -1 is the CPU.
NAME=rt BERT=${BERT:-BERT/uncased_L-12_H-768_A-12} DATA=${DATA:-../shared/data/rt-polarity} \
  exec bash "$(dirname "${BASH_SOURCE[0]}")/run_published.sh" "$@"
