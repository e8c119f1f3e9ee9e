import keras
import numpy as np
import pytest
import tensorflow as tf

from common.distribute import get_strategy
from common.optimization import (AdamWeightDecay, WarmupLinearDecay, create_optimizer,
                                 maybe_wrap_for_loss_scaling, set_mixed_precision, step_size_factor,
                                 uses_weight_decay)


def test_schedule_warms_up_then_follows_the_decay_line_started_at_step_zero():
    init_lr, num_train_steps, warmup = 1e-3, 100, 10
    schedule = WarmupLinearDecay(init_lr, num_train_steps, warmup)
    expected = {
        0: 0.0,
        5: init_lr * 5 / warmup,
        warmup: init_lr * (1 - warmup / num_train_steps),  # not init_lr: decay was not restarted
        60: init_lr * (1 - 60 / num_train_steps),
        num_train_steps - 1: init_lr / num_train_steps,
        num_train_steps: 0.0,
        num_train_steps + 50: 0.0,
    }
    for step, value in expected.items():
        np.testing.assert_allclose(float(schedule(step)), value, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")


def test_schedule_without_warmup_and_invalid_arguments():
    np.testing.assert_allclose(float(WarmupLinearDecay(2.0, 4, 0)(0)), 2.0)
    np.testing.assert_allclose(float(WarmupLinearDecay(2.0, 4, 0)(3)), 0.5)
    with pytest.raises(ValueError, match="num_train_steps"):
        WarmupLinearDecay(1.0, 0, 0)
    with pytest.raises(ValueError, match="num_warmup_steps"):
        WarmupLinearDecay(1.0, 10, -1)


def test_create_optimizer_starts_at_zero_learning_rate_and_clips_at_clip_norm():
    optimizer = create_optimizer(1e-4, num_train_steps=100, num_warmup_steps=10)
    assert float(optimizer.learning_rate) == 0.0
    assert optimizer.global_clipnorm == 1.0
    assert optimizer.epsilon == 1e-6 and optimizer.weight_decay_rate == 0.01
    assert not optimizer.bias_correction
    assert create_optimizer(1e-4, 100, 10, clip_norm=None).global_clipnorm is None


def test_weight_decay_exclusions_cover_our_paths_and_googles_names():
    decayed = [
        "bert_encoder/token_embedding/embeddings",
        "bert_encoder/transformer_layer_0/self_attention_layer/query/kernel",
        "bert_encoder/transformer_layer_0/feedforward_intermediate_dense/kernel",
        "masked_lm_head/intermediate_dense/kernel",
        "bert/encoder/layer_0/attention/self/query/kernel",
    ]
    excluded = [
        "bert_encoder/embeddings_layer_norm/gamma",
        "bert_encoder/embeddings_layer_norm/beta",
        "bert_encoder/transformer_layer_0/self_attention_layer_norm/gamma",
        "bert_encoder/transformer_layer_0/feedforward_layer_norm/beta",
        "bert_encoder/transformer_layer_0/feedforward_intermediate_dense/bias",
        "bert_encoder/transformer_layer_0/self_attention_layer/query/bias",
        "masked_lm_head/output_bias",
        "bert/encoder/layer_0/attention/output/LayerNorm/gamma",
        "bert/embeddings/LayerNorm/beta",
        "cls/predictions/output_bias",
        "ln_final/gamma",
    ]
    assert all(uses_weight_decay(path) for path in decayed)
    assert not any(uses_weight_decay(path) for path in excluded)


def _toy_variables():
    """A kernel and an embedding (decayed), a bias and LayerNorm gamma/beta (not decayed)."""
    dense = keras.layers.Dense(3, name="dense")
    dense.build((None, 2))
    embedding = keras.layers.Embedding(5, 3, name="word_embeddings")
    embedding.build((None,))
    layer_norm = keras.layers.LayerNormalization(name="output_layer_norm")
    layer_norm.build((None, 3))
    variables = [dense.kernel, dense.bias, embedding.embeddings, layer_norm.gamma, layer_norm.beta]
    rng = np.random.default_rng(1)
    for variable in variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return variables, [True, False, True, False, False]


def _numpy_adam_weight_decay(params, grads_per_step, decays, lr, weight_decay, clip_norm=None,
                             bias_correction=False, beta_1=0.9, beta_2=0.999, epsilon=1e-6):
    """Google's AdamWeightDecayOptimizer (or standard AdamW with bias_correction) in float64 NumPy."""
    params = [np.asarray(p, np.float64) for p in params]
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        grads = [np.asarray(g, np.float64) for g in grads]
        if clip_norm is not None:
            norm = np.sqrt(sum(np.sum(g * g) for g in grads))
            grads = [g * clip_norm / max(norm, clip_norm) for g in grads]
        for k, grad in enumerate(grads):
            first[k] = beta_1 * first[k] + (1 - beta_1) * grad
            second[k] = beta_2 * second[k] + (1 - beta_2) * grad * grad
            m, v = first[k], second[k]
            if bias_correction:
                m, v = m / (1 - beta_1 ** t), v / (1 - beta_2 ** t)
            update = m / (np.sqrt(v) + epsilon)
            if decays[k]:
                update = update + weight_decay * params[k]
            params[k] = params[k] - lr * update
    return params


def _random_gradients(variables, steps, scale, seed=2):
    rng = np.random.default_rng(seed)
    return [[(scale * rng.normal(size=v.shape)).astype("float32") for v in variables] for _ in range(steps)]


@pytest.mark.parametrize("bias_correction", [False, True])
def test_three_steps_match_numpy_with_decay_only_on_kernels_and_embeddings(bias_correction):
    variables, decays = _toy_variables()
    initial = [v.numpy() for v in variables]
    grads_per_step = _random_gradients(variables, steps=3, scale=0.1)
    optimizer = AdamWeightDecay(learning_rate=0.1, weight_decay_rate=0.2, bias_correction=bias_correction)
    for grads in grads_per_step:
        optimizer.apply([tf.constant(g) for g in grads], variables)

    expected = _numpy_adam_weight_decay(initial, grads_per_step, decays, lr=0.1, weight_decay=0.2,
                                        bias_correction=bias_correction)
    # float32 `1 - 0.999 ** t` carries ~3e-5 relative error, so bias correction gets a looser bound.
    atol = 1e-5 if bias_correction else 1e-6
    for variable, value in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=atol, err_msg=variable.path)
    # The expectation is sensitive to the mask: decaying everything would move gamma measurably.
    everything = _numpy_adam_weight_decay(initial, grads_per_step, [True] * 5, lr=0.1, weight_decay=0.2,
                                          bias_correction=bias_correction)
    assert np.abs(everything[3] - expected[3]).max() > 1e-3


def _numpy_chainer_adam(params, grads_per_step, decays, eta, weight_decay_rate, clip_norm=None,
                        beta1=0.9, beta2=0.999, eps=1e-6):
    """chainer.optimizers.Adam(alpha=1, eps, weight_decay_rate) with eta, GradientClipping hook, written
    as Chainer's AdamRule.update_core_cpu: m += (1-b1)(g-m); v += (1-b2)(g^2-v);
    p -= eta * (lr_t * m / (sqrt(v) + eps) + rate * p), lr_t = sqrt(1-b2^t) / (1-b1^t)."""
    params = [np.asarray(p, np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        grads = [np.asarray(g, np.float64) for g in grads]
        if clip_norm is not None:
            rate = clip_norm / np.sqrt(sum(np.sum(g * g) for g in grads))
            if rate < 1:
                grads = [g * rate for g in grads]
        lr_t = np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        for k, grad in enumerate(grads):
            m[k] += (1 - beta1) * (grad - m[k])
            v[k] += (1 - beta2) * (grad * grad - v[k])
            decay = weight_decay_rate if decays[k] else 0.0
            params[k] = params[k] - eta * (lr_t * m[k] / (np.sqrt(v[k]) + eps) + decay * params[k])
    return params


def test_chainer_adam_first_step_by_hand():
    """One scalar weight (a 1x1 kernel, decayed): g = 0.5, p = 2, eta = 0.1, decay 0.01, t = 1."""
    dense = keras.layers.Dense(1, use_bias=False, name="dense")
    dense.build((None, 1))
    dense.kernel.assign([[2.0]])
    optimizer = AdamWeightDecay(learning_rate=0.1, weight_decay_rate=0.01, bias_correction="step_size")
    optimizer.apply([tf.constant([[0.5]])], [dense.kernel])
    # m = 0.1 * 0.5 = 0.05; v = 0.001 * 0.25 = 0.00025; lr_t = sqrt(0.001) / 0.1 = 0.316227766
    # p = 2 - 0.1 * (0.316227766 * 0.05 / (0.0158113883 + 1e-6) + 0.01 * 2) = 2 - 0.1 * (0.999936757 + 0.02)
    np.testing.assert_allclose(dense.kernel.numpy()[0, 0], 1.8980063243, rtol=0, atol=2e-6)
    # Google's uncorrected step would be 0.1 * (0.05 / 0.0158124 + 0.02): 3x larger.
    assert abs(dense.kernel.numpy()[0, 0] - (2 - 0.1 * (0.05 / (0.0158113883 + 1e-6) + 0.02))) > 0.2
    np.testing.assert_allclose(optimizer.step_size_factor(), 0.316227766, rtol=1e-6)
    np.testing.assert_allclose(optimizer.last_learning_rate(), 0.1, rtol=1e-7)


def test_chainer_adam_three_clipped_steps_match_chainers_update_rule():
    variables, decays = _toy_variables()
    initial = [v.numpy() for v in variables]
    grads_per_step = _random_gradients(variables, steps=3, scale=1.0)
    optimizer = AdamWeightDecay(learning_rate=0.05, weight_decay_rate=0.1, epsilon=1e-6,
                                bias_correction="step_size", global_clipnorm=1.0)
    for grads in grads_per_step:
        optimizer.apply([tf.constant(g) for g in grads], variables)
    expected = _numpy_chainer_adam(initial, grads_per_step, decays, eta=0.05, weight_decay_rate=0.1, clip_norm=1.0)
    for variable, value in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=2e-6, err_msg=variable.path)
    # Standard AdamW differs from it (epsilon is scaled by the correction there): not the same rule.
    other = _numpy_adam_weight_decay(initial, grads_per_step, decays, lr=0.05, weight_decay=0.1, clip_norm=1.0,
                                     bias_correction=False)
    assert max(np.abs(a - b).max() for a, b in zip(other, expected)) > 1e-2


def test_step_size_factor_reproduces_the_published_lr_column():
    """haradatm's train_dml-rt.log prints Chainer's optimizer.lr after 63 updates an epoch (1,000 / 16)."""
    published = {1: 0.247480, 2: 0.344153, 3: 0.415080, 10: 0.683795, 100: 0.999084}
    for epoch, value in published.items():
        assert f"{step_size_factor(63 * epoch):.6f}" == f"{value:.6f}"
    assert step_size_factor(0) == 0.0
    with pytest.raises(ValueError, match="bias_correction"):
        AdamWeightDecay(bias_correction="chainer")


def test_global_norm_clipping_matches_numpy():
    variables, decays = _toy_variables()
    initial = [v.numpy() for v in variables]
    grads_per_step = _random_gradients(variables, steps=3, scale=3.0)
    clip_norm = 0.5
    assert all(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads)) > 4 * clip_norm
               for grads in grads_per_step)
    optimizer = AdamWeightDecay(learning_rate=0.05, weight_decay_rate=0.01, global_clipnorm=clip_norm)
    for grads in grads_per_step:
        optimizer.apply([tf.constant(g) for g in grads], variables)

    expected = _numpy_adam_weight_decay(initial, grads_per_step, decays, lr=0.05, weight_decay=0.01,
                                        clip_norm=clip_norm)
    for variable, value in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=1e-6, err_msg=variable.path)


# Replica 1's gradient is `factor` x replica 0's (norm ~5.5). With -0.8 both parts exceed the clip but
# their sum (norm ~1.1) does not; with 0.5 the sum exceeds it too. Per-replica clipping fails both.
@pytest.mark.parametrize("factor, sum_is_clipped", [(-0.8, False), (0.5, True)])
def test_mirrored_clips_the_gradient_summed_over_replicas(factor, sum_is_clipped):
    """Keras clips each replica's partial gradient; we must clip their sum, as one device would."""
    clip_norm = 2.0
    # get_strategy shares one MirroredStrategy per process (a second one would reuse collective keys).
    strategy = get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        variables, decays = _toy_variables()
        optimizer = AdamWeightDecay(learning_rate=0.05, weight_decay_rate=0.01, global_clipnorm=clip_norm)
        optimizer.build(variables)
    initial = [v.numpy() for v in variables]
    base = _random_gradients(variables, steps=1, scale=1.0)[0]
    replica_grads = [[tf.constant(g) for g in base], [tf.constant(factor * g) for g in base]]
    summed = [(1 + factor) * g for g in base]
    norm = lambda grads: np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))  # noqa: E731
    assert min(norm(base), norm([factor * g for g in base])) > clip_norm
    assert (norm(summed) > clip_norm) == sum_is_clipped

    @tf.function
    def apply_step():
        def replica_fn():
            replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
            grads = [tf.where(replica_id == 0, g0, g1) for g0, g1 in zip(*replica_grads)]
            optimizer.apply(grads, variables)
        strategy.run(replica_fn)

    apply_step()
    expected = _numpy_adam_weight_decay(initial, [summed], decays, lr=0.05, weight_decay=0.01,
                                        clip_norm=clip_norm)
    for variable, value in zip(variables, expected):
        for device_value in strategy.experimental_local_results(variable.value):
            np.testing.assert_allclose(device_value.numpy(), value, rtol=1e-5, atol=1e-6,
                                       err_msg=variable.path)


def test_get_config_round_trip():
    optimizer = AdamWeightDecay(learning_rate=0.01, weight_decay_rate=0.3, epsilon=1e-7,
                                bias_correction=True, global_clipnorm=5.0)
    clone = AdamWeightDecay.from_config(optimizer.get_config())
    assert (clone.weight_decay_rate, clone.epsilon, clone.bias_correction, clone.global_clipnorm) == (
        0.3, 1e-7, True, 5.0)


def test_set_mixed_precision_policies_and_loss_scale_wrapping():
    optimizer = AdamWeightDecay(learning_rate=0.01)
    set_mixed_precision("bfloat16")
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert maybe_wrap_for_loss_scaling(optimizer) is optimizer
    set_mixed_precision("float16")
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    wrapped = maybe_wrap_for_loss_scaling(optimizer)
    assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
    assert wrapped.inner_optimizer is optimizer
    assert maybe_wrap_for_loss_scaling(wrapped) is wrapped
    set_mixed_precision("none")
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError, match="bfloat16"):
        set_mixed_precision("fp8")
