"""Checkpoints: our own resumable save/restore (tf.train.Checkpoint); pretrained loaders are added below."""

from __future__ import annotations

import os

import tensorflow as tf


def make_checkpoint_manager(directory: str, max_to_keep: int = 5, **trackables):
    """A `tf.train.Checkpoint` over `trackables` (model=..., optimizer=..., step=...) and its manager."""
    checkpoint = tf.train.Checkpoint(**trackables)
    manager = tf.train.CheckpointManager(checkpoint, os.fspath(directory), max_to_keep=max_to_keep)
    return checkpoint, manager


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager):
    """Restores the newest checkpoint in the manager's directory; returns its path or None."""
    path = manager.latest_checkpoint
    if path:
        checkpoint.restore(path).expect_partial()
    return path
