"""Test-wide set-up: quiet TensorFlow, and two logical CPU devices so MirroredStrategy has two replicas."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from common import cli  # noqa: E402

# Each pytest-xdist worker imports TensorFlow outside pytest's capture: keep its start-up notices off the terminal.
cli.quiet_tensorflow([])

import tensorflow as tf  # noqa: E402

# Logical devices can only be configured before TensorFlow initialises its runtime, so do it here.
_cpus = tf.config.list_physical_devices("CPU")
if _cpus:
    try:
        tf.config.set_logical_device_configuration(
            _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    except RuntimeError:
        pass

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture
def shared_data():
    """Path to ../shared/data; tests that need it skip where a fresh clone has none."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _reset_keras_state():
    import keras
    yield
    keras.mixed_precision.set_global_policy("float32")
