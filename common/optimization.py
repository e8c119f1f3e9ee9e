"""BERT's optimizer and learning-rate schedule, as in Google's `optimization.py`, for Keras 3 on TensorFlow.

`AdamWeightDecay` is Google's `AdamWeightDecayOptimizer`: Adam moments WITHOUT bias correction,
decoupled weight decay added to the update (so it is scaled by the learning rate), and no decay on
LayerNorm parameters or biases. Two bias-corrected variants: standard AdamW (`bias_correction=True`)
and Chainer's `Adam` with `weight_decay_rate`, used by bert-chainer's `WeightDecayForMatrixAdam`
(`bias_correction="step_size"`). Global-norm clipping is applied to the gradient summed over all
replicas, so a run on N replicas takes the same step as one device on the same global batch
(Keras itself clips each replica's partial gradient before the all-reduce).
"""

from __future__ import annotations

import re
from typing import Sequence

import keras
import tensorflow as tf
from keras import ops

MIXED_PRECISION_NAMES = ("none", "bfloat16", "float16")
_KERAS_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

# Google excludes names containing these; the gamma/beta rule also covers LayerNormalization layers
# not called "layer_norm" (our keras-hub paths end in ".../<something>_layer_norm/gamma").
DEFAULT_WEIGHT_DECAY_EXCLUDES = ("LayerNorm", "layer_norm", "bias", r"(^|/)gamma$", r"(^|/)beta$")


def set_mixed_precision(name: str) -> None:
    """Sets the Keras global dtype policy: none -> float32, bfloat16/float16 -> mixed_<name>.

    Call before building models. With float16, `common.training.Trainer` wraps the optimizer in a
    `keras.optimizers.LossScaleOptimizer` (see `maybe_wrap_for_loss_scaling`).
    """
    if name not in _KERAS_POLICIES:
        raise ValueError(f"unknown mixed precision {name!r}; expected one of {', '.join(MIXED_PRECISION_NAMES)}")
    keras.mixed_precision.set_global_policy(_KERAS_POLICIES[name])


def maybe_wrap_for_loss_scaling(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Wraps `optimizer` in dynamic loss scaling when the global policy computes in float16."""
    if (keras.mixed_precision.global_policy().compute_dtype == "float16"
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Google BERT's schedule: linear warmup to `initial_learning_rate`, then the linear decay that
    started at step 0 (it is not restarted when warmup ends) reaching 0 at `num_train_steps`.

    lr(step) = init_lr * step / warmup            if step < warmup
             = init_lr * (1 - min(step, N) / N)   otherwise
    """

    def __init__(self, initial_learning_rate: float, num_train_steps: int, num_warmup_steps: int = 0):
        if num_train_steps <= 0:
            raise ValueError(f"num_train_steps must be positive, got {num_train_steps}")
        if num_warmup_steps < 0:
            raise ValueError(f"num_warmup_steps must be >= 0, got {num_warmup_steps}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.num_train_steps = int(num_train_steps)
        self.num_warmup_steps = int(num_warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decayed = self.initial_learning_rate * (
            1.0 - ops.minimum(step, float(self.num_train_steps)) / self.num_train_steps)
        if self.num_warmup_steps == 0:
            return decayed
        warmup = self.initial_learning_rate * step / self.num_warmup_steps
        return ops.where(step < self.num_warmup_steps, warmup, decayed)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "num_train_steps": self.num_train_steps,
                "num_warmup_steps": self.num_warmup_steps}


# False: Google's BERT; True: standard AdamW; "step_size": Chainer's Adam (and TF1's tf.train.AdamOptimizer).
BIAS_CORRECTIONS = (False, True, STEP_SIZE_CORRECTION := "step_size")


def step_size_factor(step: int, beta_1: float = 0.9, beta_2: float = 0.999) -> float:
    """sqrt(1 - beta_2^t) / (1 - beta_1^t) after `step` updates (t = step): Chainer's `Adam.lr` with alpha=1."""
    if step <= 0:
        return 0.0
    return (1.0 - beta_2 ** step) ** 0.5 / (1.0 - beta_1 ** step)


def uses_weight_decay(variable_path: str,
                      exclude_patterns: Sequence[str] = DEFAULT_WEIGHT_DECAY_EXCLUDES) -> bool:
    """False when any pattern matches (re.search) the variable's path, e.g. '.../layer_norm/gamma'."""
    return not any(re.search(pattern, variable_path) for pattern in exclude_patterns)


def _variable_path(variable) -> str:
    return getattr(variable, "path", None) or variable.name


class AdamWeightDecay(keras.optimizers.Optimizer):
    """Google BERT's AdamWeightDecayOptimizer as a Keras 3 optimizer (TensorFlow backend).

    m = beta_1 m + (1 - beta_1) g;  v = beta_2 v + (1 - beta_2) g^2
    update = m / (sqrt(v) + epsilon) + weight_decay_rate * param   (decay only where `uses_weight_decay`)
    param -= learning_rate * update
    `bias_correction=True` uses m / (1 - beta_1^t) and v / (1 - beta_2^t) instead (standard AdamW).
    `bias_correction="step_size"` is Chainer's Adam (alpha=1, eta=learning_rate), the correction folded
    into the step, epsilon and the decay left uncorrected:
    update = sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon) + weight_decay_rate * param
    (`step_size_factor()` is that factor: what Chainer reports as `optimizer.lr`).

    Works in a custom loop under `strategy.run` (Mirrored, MultiWorkerMirrored): `apply` sums the
    replicas' gradients, then clips the sum to `global_clipnorm`, then updates every replica alike.
    """

    def __init__(self, learning_rate=1e-3, weight_decay_rate: float = 0.01, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-6, bias_correction: bool = False,
                 global_clipnorm: float | None = None,
                 exclude_from_weight_decay: Sequence[str] = DEFAULT_WEIGHT_DECAY_EXCLUDES,
                 name: str = "adam_weight_decay"):
        # Base-class weight decay stays off: decay is part of `update_step`, as in Google's optimizer.
        super().__init__(learning_rate=learning_rate, global_clipnorm=global_clipnorm, name=name)
        if not hasattr(super(), "_all_reduce_sum_gradients"):
            raise NotImplementedError("AdamWeightDecay needs the TensorFlow backend of Keras 3")
        self.weight_decay_rate = weight_decay_rate
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        if bias_correction not in BIAS_CORRECTIONS:
            raise ValueError(f"bias_correction must be one of {BIAS_CORRECTIONS}, got {bias_correction!r}")
        self.bias_correction = bias_correction
        self.exclude_from_weight_decay_patterns = tuple(exclude_from_weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._first_moments, self._second_moments = self.add_optimizer_variables(
            variables, ["m", "v"])
        # Decided here from Keras paths: inside update_step under a strategy only the device copy is seen.
        self._decays = [uses_weight_decay(_variable_path(variable), self.exclude_from_weight_decay_patterns)
                        for variable in variables]

    def _clip_gradients(self, grads):
        # Keras clips before the cross-replica sum; we clip the summed gradient instead (below).
        return grads

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Sparse (embedding) gradients go dense first: the update is dense anyway, and the collective
        # gather of IndexedSlices fails when replicas hold different row counts (per-replica trimmed lengths).
        grads_and_vars = [(tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient,
                           variable) for gradient, variable in grads_and_vars]
        grads_and_vars = list(super()._all_reduce_sum_gradients(grads_and_vars))
        if not self.global_clipnorm:
            return grads_and_vars
        grads, variables = zip(*grads_and_vars)
        clipped, _ = tf.clip_by_global_norm(list(grads), self.global_clipnorm)
        return list(zip(clipped, variables))

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        first_moment, second_moment = self._first_moments[index], self._second_moments[index]
        dtype = variable.dtype
        if isinstance(gradient, tf.IndexedSlices):
            # Embedding gradients arrive sparse; Google's update (and its moments) are dense.
            gradient = tf.convert_to_tensor(gradient)
        gradient = ops.cast(gradient, dtype)
        learning_rate = ops.cast(learning_rate, dtype)

        new_m = self.beta_1 * first_moment + (1.0 - self.beta_1) * gradient
        new_v = self.beta_2 * second_moment + (1.0 - self.beta_2) * ops.square(gradient)
        self.assign(first_moment, new_m)
        self.assign(second_moment, new_v)
        t = ops.cast(self.iterations + 1, dtype)
        if self.bias_correction == STEP_SIZE_CORRECTION:
            # Chainer: lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps); eps sees the raw v.
            new_m = new_m * (ops.sqrt(1.0 - ops.power(ops.cast(self.beta_2, dtype), t))
                             / (1.0 - ops.power(ops.cast(self.beta_1, dtype), t)))
        elif self.bias_correction:
            new_m = new_m / (1.0 - ops.power(ops.cast(self.beta_1, dtype), t))
            new_v = new_v / (1.0 - ops.power(ops.cast(self.beta_2, dtype), t))

        update = new_m / (ops.sqrt(new_v) + self.epsilon)
        if self._decays[index] and self.weight_decay_rate:
            update = update + self.weight_decay_rate * variable
        self.assign_sub(variable, learning_rate * update)

    def step_size_factor(self) -> float:
        """The bias-correction factor of the last step taken (Chainer's `optimizer.lr`; 1.0 uncorrected)."""
        if self.bias_correction != STEP_SIZE_CORRECTION:
            return 1.0
        return step_size_factor(int(ops.convert_to_numpy(self.iterations)), self.beta_1, self.beta_2)

    def last_learning_rate(self) -> float:
        """The learning rate (Chainer's `eta`) the last step used (the next one's before any step)."""
        step = max(int(ops.convert_to_numpy(self.iterations)) - 1, 0)
        rate = self._learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = rate(step)
        elif callable(rate) and not isinstance(rate, keras.Variable):
            rate = rate()
        return float(ops.convert_to_numpy(rate))

    def get_config(self):
        config = super().get_config()
        # Options of the base class that this optimizer does not take.
        for key in ("weight_decay", "clipnorm", "clipvalue", "use_ema", "ema_momentum",
                    "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps"):
            config.pop(key, None)
        config.update({
            "weight_decay_rate": self.weight_decay_rate,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "bias_correction": self.bias_correction,
            "exclude_from_weight_decay": list(self.exclude_from_weight_decay_patterns),
        })
        return config


def create_optimizer(init_lr: float, num_train_steps: int, num_warmup_steps: int,
                     weight_decay: float = 0.01, clip_norm: float | None = 1.0,
                     bias_correction: bool = False, epsilon: float = 1e-6) -> AdamWeightDecay:
    """Google's `create_optimizer`: AdamWeightDecay over `WarmupLinearDecay`, clipped to `clip_norm`.

    Call under `strategy.scope()` (the optimizer creates its step counter at construction).
    Google BERT clips at 1.0, BERT4Rec at 5.0; `clip_norm=None` (or 0) disables clipping.
    """
    schedule = WarmupLinearDecay(init_lr, num_train_steps, num_warmup_steps)
    return AdamWeightDecay(learning_rate=schedule, weight_decay_rate=weight_decay, epsilon=epsilon,
                           bias_correction=bias_correction, global_clipnorm=clip_norm or None)
