"""Networks of continuous BRC: the BroNet trunk, the task embedding, the critic ensemble and the tanh-Gaussian actor.

Parameters are always float32; `dtype` is the compute dtype of the matmuls (bfloat16 on accelerators makes the wide
critic affordable). Every network returns float32 so that losses are computed in full precision.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# BRO/BRC initialise every kernel orthogonally with the ReLU gain and every bias with zeros.
_kernel_init = nn.initializers.orthogonal(scale=math.sqrt(2.0))
_bias_init = nn.initializers.zeros


class BroNet(nn.Module):
    """`Dense(W) -> LN -> ReLU`, then `depth` blocks `x + LN(Dense(ReLU(LN(Dense(x)))))`, then `Dense(out_dim)`."""

    width: int
    depth: int
    out_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: chex.Array) -> chex.Array:  # [..., D] -> [..., out_dim]
        dense = functools.partial(
            nn.Dense, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_kernel_init, bias_init=_bias_init
        )
        # LayerNorm statistics are computed in float32 by flax even when the compute dtype is bfloat16.
        layer_norm = functools.partial(nn.LayerNorm, dtype=self.dtype, param_dtype=jnp.float32)

        x = nn.relu(layer_norm()(dense(self.width)(x)))
        for _ in range(self.depth):
            residual = nn.relu(layer_norm()(dense(self.width)(x)))
            residual = layer_norm()(dense(self.width)(residual))
            x = x + residual
        return dense(self.out_dim)(x).astype(jnp.float32)


class TaskEmbedding(nn.Module):
    """A learnable `num_tasks x dim` table whose rows are L2-normalised to unit norm when read."""

    num_tasks: int
    dim: int = 32

    @nn.compact
    def __call__(self, task_ids: chex.Array) -> chex.Array:  # int[...] -> [..., dim]
        chex.assert_type(task_ids, int)
        table = nn.Embed(self.num_tasks, self.dim, param_dtype=jnp.float32, name="table")
        task_embedding = table(task_ids).astype(jnp.float32)
        # sqrt(sum^2 + eps) instead of jnp.linalg.norm: the norm's gradient is NaN at an all-zero row.
        norm = jnp.sqrt(jnp.sum(jnp.square(task_embedding), axis=-1, keepdims=True) + 1e-12)
        return task_embedding / norm


class Critic(nn.Module):
    """An ensemble of `num_members` independent categorical BroNets on `[obs, action, task_embedding]`.

    The members share one task-embedding table (it is learned only through the critic loss; the actor reads it with
    stop-gradient through `embed`). A single-task critic has no table.
    """

    width: int
    depth: int
    num_bins: int
    num_tasks: int
    embed_dim: int = 32
    num_members: int = 2
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        if self.num_tasks > 1:
            self.task_embedding = TaskEmbedding(self.num_tasks, self.embed_dim)
        # Stacked parameters ([num_members, ...] on every leaf) with independent initialisation per member; the same
        # input is fed to every member (in_axes=None).
        ensemble = nn.vmap(
            BroNet,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_members,
        )
        self.members = ensemble(self.width, self.depth, self.num_bins, self.dtype)

    def embed(self, task_ids: chex.Array) -> chex.Array:  # int[...] -> [..., embed_dim] (or [..., 0])
        """The unit-norm task embedding, or an empty `[..., 0]` array for a single-task critic."""
        if self.num_tasks == 1:
            return jnp.zeros((*task_ids.shape, 0), jnp.float32)
        return self.task_embedding(task_ids)

    def __call__(self, obs: chex.Array, action: chex.Array, task_ids: chex.Array) -> chex.Array:
        """`obs [..., O]`, `action [..., A]`, `task_ids int[...]` -> logits `[num_members, ..., K]` (float32)."""
        chex.assert_equal_shape_prefix([obs, action], obs.ndim - 1)
        chex.assert_shape(task_ids, obs.shape[:-1])
        inputs = jnp.concatenate([obs, action, self.embed(task_ids)], axis=-1)
        return self.members(inputs)


class Actor(nn.Module):
    """A BroNet on `[obs, task_embedding]` giving the mean and bounded log-std of a tanh-squashed Gaussian."""

    action_dim: int
    width: int = 256
    depth: int = 1
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, obs: chex.Array, task_embedding: chex.Array) -> tuple[chex.Array, chex.Array]:
        """`obs [..., O]`, `task_embedding [..., D]` -> `(mean [..., A], log_std [..., A])` (float32)."""
        chex.assert_equal_shape_prefix([obs, task_embedding], obs.ndim - 1)
        inputs = jnp.concatenate([obs, task_embedding], axis=-1)
        outputs = BroNet(self.width, self.depth, 2 * self.action_dim, self.dtype)(inputs)
        mean, log_std = jnp.split(outputs, 2, axis=-1)
        # A smooth squash (rather than a hard clip) keeps a gradient at the bounds.
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (jnp.tanh(log_std) + 1.0)
        return mean, log_std


def sample_tanh_gaussian(
    key: chex.PRNGKey, mean: chex.Array, log_std: chex.Array, action_mask: chex.Array | None = None
) -> tuple[chex.Array, chex.Array]:
    """Reparameterised sample `tanh(mean + std * noise)` and its log-prob.

    `mean`, `log_std`: `[..., A]`; `action_mask`: bool, broadcastable to `[..., A]`, true where the task reads the
    action entry. Returns `action [..., A]` (masked entries 0) and `log_prob [...]` summed over unmasked entries only.
    """
    chex.assert_equal_shape([mean, log_std])
    mean = mean.astype(jnp.float32)
    log_std = log_std.astype(jnp.float32)
    noise = jax.random.normal(key, mean.shape, jnp.float32)
    pre_tanh = mean + jnp.exp(log_std) * noise  # u
    action = jnp.tanh(pre_tanh)

    # Gaussian log-density of u written with the noise itself: (u - mean) / std == noise, without a division.
    gaussian_log_prob = -0.5 * jnp.square(noise) - log_std - 0.5 * math.log(2.0 * math.pi)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)): exact algebra, finite for any u (1 - tanh^2 underflows to 0
    # in float32 once |u| > ~9).
    log_det_jacobian = 2.0 * (math.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
    log_prob = gaussian_log_prob - log_det_jacobian  # [..., A]

    if action_mask is not None:
        action_mask = jnp.broadcast_to(action_mask, mean.shape)
        action = jnp.where(action_mask, action, 0.0)
        log_prob = jnp.where(action_mask, log_prob, 0.0)
    return action, jnp.sum(log_prob, axis=-1)


def deterministic_action(mean: chex.Array, action_mask: chex.Array | None = None) -> chex.Array:
    """The evaluation action `tanh(mean)` (`[..., A]`, float32) with masked entries set to 0."""
    action = jnp.tanh(mean.astype(jnp.float32))
    if action_mask is not None:
        action = jnp.where(action_mask, action, 0.0)
    return action
