"""Tests of purejaxmt.nets: shapes, the critic ensemble and its task embedding, the tanh-Gaussian actor, precision."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxmt import categorical, nets

OBS, ACT, TASKS, BATCH, BINS = 7, 3, 4, 5, 11


def make_critic(**overrides) -> nets.Critic:
    settings = dict(width=32, depth=1, num_bins=BINS, num_tasks=TASKS)
    return nets.Critic(**(settings | overrides))


def critic_inputs(seed: int = 0, batch_shape: tuple[int, ...] = (TASKS, BATCH)):
    rng = np.random.default_rng(seed)
    obs = jnp.asarray(rng.standard_normal((*batch_shape, OBS)), jnp.float32)
    action = jnp.asarray(rng.uniform(-1, 1, (*batch_shape, ACT)), jnp.float32)
    task_ids = jnp.asarray(rng.integers(0, TASKS, batch_shape), jnp.int32)
    return obs, action, task_ids


def make_key(seed: int) -> jax.Array:
    # The "rbg" generator compiles several times faster on CPU than the default threefry; the networks do not care.
    return jax.random.key(seed, impl="rbg")


def count_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


# Compilation dominates these tests on CPU (eager flax runs op by op, and every orthogonal kernel needs a QR and random
# bits), so the networks are jitted once here and initialised once per module; parameters do not depend on the batch
# shape or on the compute dtype. Tests copy parameters before they modify them.
CRITIC = make_critic()
ACTOR = nets.Actor(ACT, width=16)
critic_apply = jax.jit(CRITIC.apply)
critic_embed = jax.jit(functools.partial(CRITIC.apply, method=nets.Critic.embed))
actor_apply = jax.jit(ACTOR.apply)


@pytest.fixture(scope="module")
def critic_params():
    return jax.jit(CRITIC.init)(make_key(0), *critic_inputs())


@pytest.fixture(scope="module")
def actor_params():
    obs, _, _ = critic_inputs()
    return jax.jit(ACTOR.init)(make_key(1), obs, jnp.zeros((*obs.shape[:-1], 32)))


# ---------------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("batch_shape", [(BATCH,), (TASKS, BATCH)])
def test_critic_and_actor_shapes(batch_shape, critic_params, actor_params):
    obs, action, task_ids = critic_inputs(batch_shape=batch_shape)
    logits = critic_apply(critic_params, obs, action, task_ids)
    chex.assert_shape(logits, (2, *batch_shape, BINS))
    assert logits.dtype == jnp.float32
    task_embedding = critic_embed(critic_params, task_ids)
    chex.assert_shape(task_embedding, (*batch_shape, 32))
    mean, log_std = actor_apply(actor_params, obs, task_embedding)
    chex.assert_shape([mean, log_std], (*batch_shape, ACT))
    assert mean.dtype == log_std.dtype == jnp.float32


def test_critic_rejects_mismatched_task_ids(critic_params):
    obs, action, task_ids = critic_inputs()
    with pytest.raises(AssertionError):
        jax.eval_shape(CRITIC.apply, critic_params, obs, action, task_ids[:, :-1])


def test_single_task_critic_has_no_embedding():
    critic = make_critic(num_tasks=1)
    obs, action, _ = critic_inputs()
    task_ids = jnp.zeros(obs.shape[:-1], jnp.int32)
    # Shapes only (jax.eval_shape compiles nothing).
    params = jax.eval_shape(critic.init, make_key(0), obs, action, task_ids)
    assert set(params["params"]) == {"members"}
    chex.assert_shape(params["params"]["members"]["Dense_0"]["kernel"], (2, OBS + ACT, 32))  # sees [obs, action]
    chex.assert_shape(jax.eval_shape(critic.apply, params, obs, action, task_ids), (2, TASKS, BATCH, BINS))
    task_embedding = jax.eval_shape(functools.partial(critic.apply, method=nets.Critic.embed), params, task_ids)
    chex.assert_shape(task_embedding, (TASKS, BATCH, 0))
    # An actor fed the empty embedding is a BroNet on the observation alone.
    actor_shapes = jax.eval_shape(ACTOR.init, make_key(1), obs, jnp.zeros(task_embedding.shape))
    bronet_shapes = jax.eval_shape(nets.BroNet(16, 1, 2 * ACT).init, make_key(1), obs)
    chex.assert_trees_all_equal_shapes(actor_shapes["params"]["BroNet_0"], bronet_shapes["params"])


# ---------------------------------------------------------------------------------------------- critic ensemble


def test_critic_members_are_independent(critic_params):
    params = critic_params
    obs, action, task_ids = critic_inputs()
    members = params["params"]["members"]
    for path, leaf in jax.tree_util.tree_leaves_with_path(members):
        assert leaf.shape[0] == 2, path
        if path[-1].key == "kernel":  # biases and LayerNorm parameters start equal (zeros, ones) by design
            assert not np.allclose(leaf[0], leaf[1]), f"members share the initial {jax.tree_util.keystr(path)}"
    logits = critic_apply(params, obs, action, task_ids)
    assert np.abs(np.asarray(logits[0] - logits[1])).max() > 1e-3

    # Each member's gradient touches only its own slice: a loss on member 0 leaves member 1's parameters alone.
    grads = jax.jit(jax.grad(lambda p: jnp.sum(CRITIC.apply(p, obs, action, task_ids)[0] ** 2)))(params)
    for leaf in jax.tree.leaves(grads["params"]["members"]):
        assert np.all(np.asarray(leaf[1]) == 0.0)


def test_orthogonal_init_and_zero_bias(critic_params):
    params = critic_params["params"]["members"]
    kernel = np.asarray(params["Dense_1"]["kernel"][0], np.float64)  # [32, 32], one member's block kernel
    np.testing.assert_allclose(kernel.T @ kernel, 2.0 * np.eye(32), atol=1e-4)  # orthogonal with gain sqrt(2)
    kernel = np.asarray(params["Dense_0"]["kernel"][1], np.float64)  # [42, 32]: orthonormal columns, times sqrt(2)
    np.testing.assert_allclose(kernel.T @ kernel, 2.0 * np.eye(32), atol=1e-4)
    assert all(np.all(np.asarray(params[name]["bias"]) == 0.0) for name in params if name.startswith("Dense"))


def test_task_embedding_rows_have_unit_norm(critic_params):
    params = jax.tree.map(lambda x: x, critic_params)
    all_tasks = jnp.arange(TASKS)
    norms = np.linalg.norm(np.asarray(critic_embed(params, all_tasks)), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)

    # Still unit norm after the table has moved far from its initialisation.
    table = params["params"]["task_embedding"]["table"]["embedding"]
    scales = jnp.asarray([[1e-3], [1.0], [50.0], [1e3]], jnp.float32)
    params["params"]["task_embedding"]["table"]["embedding"] = table * scales
    task_embedding = critic_embed(params, all_tasks)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(task_embedding), axis=-1), 1.0, atol=1e-6)
    # Different tasks get different embeddings.
    assert np.abs(np.asarray(task_embedding[0] - task_embedding[1])).max() > 1e-2


def test_embedding_learned_by_critic_loss_only(critic_params, actor_params):
    obs, action, _ = critic_inputs()
    task_ids = jnp.broadcast_to(jnp.arange(BATCH) % (TASKS - 1), (TASKS, BATCH))  # the last task is never seen

    def actor_side_loss(critic_params, stop_gradient: bool):
        task_embedding = CRITIC.apply(critic_params, task_ids, method=nets.Critic.embed)
        if stop_gradient:
            task_embedding = jax.lax.stop_gradient(task_embedding)
        mean, log_std = ACTOR.apply(actor_params, obs, task_embedding)
        return jnp.sum(mean**2) + jnp.sum(log_std)

    def critic_loss(critic_params):
        logits = CRITIC.apply(critic_params, obs, action, task_ids)
        target_probs = jax.nn.softmax(jnp.linspace(-1.0, 1.0, BINS))
        return categorical.cross_entropy(logits, jnp.broadcast_to(target_probs, logits.shape)).mean(axis=(1, 2)).sum()

    @jax.jit
    def table_grads(critic_params):
        def table_grad(loss):
            return jax.grad(loss)(critic_params)["params"]["task_embedding"]["table"]["embedding"]

        return (
            table_grad(functools.partial(actor_side_loss, stop_gradient=True)),
            table_grad(functools.partial(actor_side_loss, stop_gradient=False)),
            table_grad(critic_loss),
        )

    actor_grad, actor_grad_without_stop, grad = (np.asarray(g) for g in table_grads(critic_params))
    assert np.all(actor_grad == 0.0)
    assert np.abs(actor_grad_without_stop).max() > 0.0  # the check above is not vacuous
    assert np.isfinite(grad).all()
    assert np.all(np.abs(grad[: TASKS - 1]).max(axis=-1) > 0.0)  # every seen task's row is learned
    assert np.all(grad[TASKS - 1] == 0.0)  # an unseen task's row gets no gradient


# --------------------------------------------------------------------------------------------------------- actor


def reference_tanh_gaussian(mean, log_std, noise, action_mask):
    """Float64 NumPy log-density of a = tanh(u), u ~ N(mean, std), using log(1 - tanh(u)^2) = -2 log cosh(u)."""
    mean, log_std, noise = (np.asarray(x, np.float64) for x in (mean, log_std, noise))
    std = np.exp(log_std)
    pre_tanh = mean + std * noise
    gaussian = -0.5 * ((pre_tanh - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    log_prob = gaussian + 2.0 * np.log(np.cosh(pre_tanh))
    mask = np.broadcast_to(action_mask, mean.shape)
    return np.where(mask, np.tanh(pre_tanh), 0.0), np.where(mask, log_prob, 0.0).sum(-1)


@pytest.mark.parametrize("seed", range(4))
def test_tanh_gaussian_log_prob_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (TASKS, 64, 6)
    mean = rng.normal(0.0, 3.0, shape).astype(np.float32)
    mean[:, :4] = rng.choice([-40.0, 40.0], (TASKS, 4, 6))  # saturated: 1 - tanh(u)^2 underflows in float32
    log_std = rng.uniform(-10.0, 2.0, shape).astype(np.float32)
    action_mask = rng.random((TASKS, 1, 6)) < 0.7  # per task: the action entries it reads
    action_mask[0] = True
    key = make_key(seed)

    action, log_prob = jax.jit(nets.sample_tanh_gaussian)(key, mean, log_std, action_mask)
    # Reparameterisation: the sample is tanh(mean + std * noise) with noise = normal(key, shape).
    noise = np.asarray(jax.jit(jax.random.normal, static_argnums=(1, 2))(key, shape, jnp.float32))
    expected_action, expected_log_prob = reference_tanh_gaussian(mean, log_std, noise, action_mask)

    chex.assert_shape(action, shape)
    chex.assert_shape(log_prob, shape[:-1])
    assert np.isfinite(np.asarray(log_prob)).all()
    np.testing.assert_allclose(np.asarray(action), expected_action, atol=2e-6)
    assert np.all(np.asarray(action)[~np.broadcast_to(action_mask, shape)] == 0.0)
    # float32 carries ~1e-7 relative error on u (|u| up to ~80 here) into 2u of the log-det.
    np.testing.assert_allclose(np.asarray(log_prob), expected_log_prob, rtol=1e-5, atol=2e-4)


def test_masked_entries_contribute_nothing():
    rng = np.random.default_rng(0)
    mean = jnp.asarray(rng.normal(size=(BATCH, 4)), jnp.float32)
    log_std = jnp.asarray(rng.uniform(-3, 1, (BATCH, 4)), jnp.float32)
    action_mask = jnp.array([True, False, True, False])
    key = make_key(3)

    @jax.jit
    def log_prob_of(mean, log_std):
        return nets.sample_tanh_gaussian(key, mean, log_std, action_mask)[1]

    # Whatever sits in the masked entries leaves the log-prob unchanged and gets no gradient.
    scrambled_mean = mean.at[:, 1].set(1e3).at[:, 3].set(-7.0)
    scrambled_log_std = log_std.at[:, 1].set(2.0).at[:, 3].set(-10.0)
    np.testing.assert_array_equal(log_prob_of(mean, log_std), log_prob_of(scrambled_mean, scrambled_log_std))
    grad_mean, grad_log_std = jax.jit(jax.grad(lambda m, s: log_prob_of(m, s).sum(), argnums=(0, 1)))(mean, log_std)
    assert np.all(np.asarray(grad_mean)[:, [1, 3]] == 0.0) and np.all(np.asarray(grad_log_std)[:, [1, 3]] == 0.0)
    assert np.isfinite(np.asarray(grad_mean)).all() and np.isfinite(np.asarray(grad_log_std)).all()

    # Without a mask every entry counts.
    unmasked = jax.jit(nets.sample_tanh_gaussian)(key, mean, log_std)[1]
    assert np.all(np.asarray(unmasked) != np.asarray(log_prob_of(mean, log_std)))

    deterministic = np.asarray(nets.deterministic_action(mean, action_mask))
    assert np.all(deterministic[:, [1, 3]] == 0.0)
    np.testing.assert_allclose(deterministic[:, [0, 2]], np.tanh(np.asarray(mean)[:, [0, 2]]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(nets.deterministic_action(mean)), np.tanh(np.asarray(mean)), rtol=1e-6)


def test_log_std_stays_inside_bounds(actor_params):
    params = jax.tree.map(lambda x: x, actor_params)
    obs, _, _ = critic_inputs()
    task_embedding = jnp.zeros((*obs.shape[:-1], 32))

    # Blow up the head so that the log-std pre-activations are huge (about +-1e6).
    head = params["params"]["BroNet_0"]["Dense_3"]
    head["kernel"] = head["kernel"] * 1e6
    _, log_std = actor_apply(params, obs, task_embedding)
    log_std = np.asarray(log_std)
    assert np.isfinite(log_std).all()
    assert log_std.min() >= -10.0 and log_std.max() <= 2.0
    assert np.isclose(log_std.min(), -10.0) and np.isclose(log_std.max(), 2.0)  # both bounds are reached

    # A zero head gives the middle of the range: min + 0.5 (max - min) (tanh(0) + 1).
    head["kernel"] = jnp.zeros_like(head["kernel"])
    _, log_std = actor_apply(params, obs, task_embedding)
    np.testing.assert_allclose(np.asarray(log_std), -4.0)


# ----------------------------------------------------------------------------------------------------- precision


def test_bfloat16_compute_gives_float32_outputs_close_to_float32(critic_params, actor_params):
    obs, action, task_ids = critic_inputs()
    critic16 = make_critic(dtype=jnp.bfloat16)
    params = critic_params
    # The compute dtype does not change the parameters: same shapes, all float32.
    params16 = jax.eval_shape(critic16.init, make_key(0), obs, action, task_ids)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, params16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params16))

    logits32 = np.asarray(critic_apply(params, obs, action, task_ids))
    logits16 = jax.jit(critic16.apply)(params, obs, action, task_ids)
    assert logits16.dtype == jnp.float32
    scale = np.abs(logits32).max()
    assert np.abs(np.asarray(logits16) - logits32).max() < 0.05 * scale

    task_embedding = critic_embed(params, task_ids)
    mean32, log_std32 = actor_apply(actor_params, obs, task_embedding)
    actor16 = nets.Actor(ACT, width=16, dtype=jnp.bfloat16)
    mean16, log_std16 = jax.jit(actor16.apply)(actor_params, obs, task_embedding)
    assert mean16.dtype == log_std16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(mean16), np.asarray(mean32), atol=0.05 * float(jnp.abs(mean32).max()))
    # log_std spans a range of 12: allow 2.5% of it.
    np.testing.assert_allclose(np.asarray(log_std16), np.asarray(log_std32), atol=0.3)


def _dot_operand_dtypes(fn, *args) -> list[tuple[str, ...]]:
    """The operand dtypes of every matmul (`dot_general`) in the traced `fn`, in program order."""
    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield tuple(str(v.aval.dtype) for v in eqn.invars)
            for param in eqn.params.values():  # nested jaxprs (pjit, custom_jvp, ...), closed or open
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    yield from walk(inner)
    return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


@pytest.mark.parametrize("depth", [0, 2])
def test_bfloat16_runs_the_hidden_matmuls_in_bf16_and_the_output_layer_in_float32(depth):
    """Mixed precision: hidden layers in the compute dtype, the output projection (the logits) in float32."""
    net = nets.BroNet(width=16, depth=depth, out_dim=BINS, dtype=jnp.bfloat16)
    x = jnp.ones((BATCH, OBS), jnp.float32)
    params = net.init(make_key(0), x)
    dtypes = _dot_operand_dtypes(net.apply, params, x)
    assert len(dtypes) == 2 + 2 * depth, dtypes
    assert all(d == ("bfloat16", "bfloat16") for d in dtypes[:-1]), dtypes
    assert dtypes[-1] == ("float32", "float32"), dtypes
    # The same holds inside the critic ensemble and the Q-network's trunk.
    obs, action, task_ids = critic_inputs()
    critic16 = make_critic(dtype=jnp.bfloat16)
    critic_dtypes = _dot_operand_dtypes(critic16.apply, critic16.init(make_key(0), obs, action, task_ids), obs,
                                        action, task_ids)
    assert critic_dtypes[-1] == ("float32", "float32") and ("bfloat16", "bfloat16") in critic_dtypes


# ------------------------------------------------------------------------------------------------ parameter counts


def bronet_param_count(input_dim: int, width: int, depth: int, out_dim: int) -> int:
    """Dense(d -> W) + LN, `depth` x (2 Dense(W -> W) + 2 LN), Dense(W -> K); LN has a scale and a bias."""
    first = input_dim * width + width + 2 * width
    block = 2 * (width * width + width) + 2 * 2 * width
    head = width * out_dim + out_dim
    return first + depth * block + head


@pytest.mark.parametrize("width, expected_millions", [(512, 1.3), (4096, 69.0)])
def test_critic_parameter_count(width, expected_millions):
    # [obs 247, action 21, task embedding 32] = 300 inputs; jax.eval_shape never allocates the parameters.
    num_tasks, obs_dim, action_dim = 9, 247, 21
    critic = nets.Critic(width=width, depth=2, num_bins=101, num_tasks=num_tasks)
    obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    shapes = jax.eval_shape(critic.init, make_key(0), obs, action, jnp.zeros((1,), jnp.int32))
    per_member = count_params(shapes["params"]["members"]) // 2
    embedding = count_params(shapes["params"]["task_embedding"])
    print(f"\ncritic W={width} depth=2 bins=101 input=300: {per_member:,} per member, "
          f"{2 * per_member + embedding:,} total (embedding {embedding:,})")
    assert per_member == bronet_param_count(300, width, 2, 101)
    assert embedding == num_tasks * 32
    assert abs(per_member / 1e6 - expected_millions) < 0.05 * expected_millions


def test_actor_parameter_count():
    actor = nets.Actor(action_dim=21, width=256, depth=1)
    shapes = jax.eval_shape(actor.init, make_key(0), jnp.zeros((1, 247)), jnp.zeros((1, 32)))
    count = count_params(shapes)
    print(f"\nactor W=256 depth=1 input=279 actions=21: {count:,}")
    assert count == bronet_param_count(247 + 32, 256, 1, 2 * 21)
