"""Checkpoints: `restore` (our `tf.train.Checkpoint`s: strict restore, resume), `google` (TF1 `bert_model.ckpt`),
`huggingface` (Hugging Face folders, keras-hub presets), `chainer` (bert-chainer / Chainer npz), `folder` (our
model folders, `warm_start` from any source). Every path goes through `tf.io.gfile` (gs://, ram://)."""
# The public names, importable from here (callers keep `from common.checkpoints import ...`).

from common.checkpoints.chainer import CHAINER_NPZ_NAME, chainer_name, load_chainer_npz, save_chainer_npz
from common.checkpoints.folder import (MODEL_CONFIG_FILE, MODEL_LABELS_FILE, MODEL_RUN_CONFIG_FILE, MODEL_VOCAB_FILE,
                                       ModelFolder, read_model_folder, warm_start, write_model_folder)
from common.checkpoints.google import (GOOGLE_CHECKPOINT_NAME, GOOGLE_CONFIG_FILE, GOOGLE_VOCAB_FILE,
                                       load_google_bert_folder, load_google_checkpoint, resolve_google_checkpoint,
                                       save_google_checkpoint)
from common.checkpoints.huggingface import load_hugging_face_folder
from common.checkpoints.mapping import CheckpointMismatchError
from common.checkpoints.restore import load_model_checkpoint, make_checkpoint_manager, restore_checkpoint, restore_latest

