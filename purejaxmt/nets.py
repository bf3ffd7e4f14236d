"""Networks of BRC: the BroNet trunk, the task embedding, the critic ensemble and the tanh-Gaussian actor (continuous),
the conv encoder and the categorical Q-network (discrete).

Parameters are always float32; `dtype` is the compute dtype of the hidden matmuls (bfloat16 on accelerators makes the
wide critic affordable). Output layers compute in float32, and every network returns float32, so that logits,
softmax, projection and losses are in full precision.
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
        # The output projection runs in float32 whatever the compute dtype (the usual mixed-precision rule): its
        # outputs are the categorical logits (or the actor's mean and log-std), and bfloat16 would round each logit
        # by up to ~0.06 before the softmax, the projection and the loss. It is one narrow matmul of the network.
        return dense(self.out_dim, dtype=jnp.float32)(x.astype(jnp.float32))


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


TASK_CONDITIONINGS = ("embedding", "one_hot", "none")


class Critic(nn.Module):
    """An ensemble of `num_members` independent categorical BroNets on `[obs, action, task_embedding]`.

    `conditioning` says what stands in the task-embedding slot (the paper's ablation): "embedding", the learnable
    unit-norm table the members share (it is learned only through the critic loss; the actor reads it with
    stop-gradient through `embed`); "one_hot", a fixed one-hot of the task id (no parameters); "none", nothing. A
    single-task critic has no task input under any of them. `num_bins` is the output size of each member: the
    categorical logits, or 1 for a scalar Q head (the mean-squared-error ablation).
    """

    width: int
    depth: int
    num_bins: int
    num_tasks: int
    embed_dim: int = 32
    num_members: int = 2
    dtype: Dtype = jnp.float32
    conditioning: str = "embedding"

    def setup(self) -> None:
        if self.conditioning not in TASK_CONDITIONINGS:
            raise ValueError(f"Critic: conditioning={self.conditioning!r}; choose one of {TASK_CONDITIONINGS}")
        if self.num_tasks > 1 and self.conditioning == "embedding":
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

    def embed(self, task_ids: chex.Array) -> chex.Array:  # int[...] -> [..., embed_dim | num_tasks | 0]
        """The task input of critic and actor: the unit-norm task embedding, the one-hot of the task id, or an
        empty `[..., 0]` array (conditioning "none", or a single-task critic)."""
        if self.num_tasks == 1 or self.conditioning == "none":
            return jnp.zeros((*task_ids.shape, 0), jnp.float32)
        if self.conditioning == "one_hot":
            chex.assert_type(task_ids, int)
            return jax.nn.one_hot(task_ids, self.num_tasks, dtype=jnp.float32)
        return self.task_embedding(task_ids)

    def __call__(self, obs: chex.Array, action: chex.Array, task_ids: chex.Array) -> chex.Array:
        """`obs [..., O]`, `action [..., A]`, `task_ids int[...]` -> outputs `[num_members, ..., num_bins]`
        (float32)."""
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


# ----------------------------------------------------------------------------------------------------------------------
# Discrete BRC: a categorical Q-network on a conv (image) or Dense (vector) encoder
# ----------------------------------------------------------------------------------------------------------------------
class Conv2D(nn.Module):
    """A 2-D convolution with VALID padding, computed as one matmul over the image's patches (im2col).

    Same parameters as `nn.Conv` (`kernel [k, k, C, F]`, `bias [F]`) and the same result, but XLA:CPU runs its own
    convolutions inside a `lax.scan` (the training loop) 10-25x slower than standalone (measured: a 3x3 conv's
    gradient, batch 128 on a 10x10x7 grid, 2 ms alone, 25 ms in a scan), while a matmul runs at full speed in both.
    For small grids such as MinAtar's the k*k-fold larger patch tensor costs nothing on any backend.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: chex.Array) -> chex.Array:  # [N, H, W, C] -> [N, H', W', F]
        k, s = self.kernel_size, self.stride
        height, width = x.shape[-3:-1]
        if height < k or width < k:
            raise ValueError(f"Conv2D: kernel_size={k} does not fit a {height}x{width} input (VALID padding)")
        out_h, out_w = (height - k) // s + 1, (width - k) // s + 1
        kernel = self.param("kernel", _kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", _bias_init, (self.features,), jnp.float32)
        # Patches in the kernel's (row, column, channel) order: [N, H', W', k * k * C].
        patches = jnp.concatenate([x[:, i: i + s * (out_h - 1) + 1: s, j: j + s * (out_w - 1) + 1: s, :]
                                   for i in range(k) for j in range(k)], axis=-1)
        kernel = kernel.reshape(-1, self.features)
        return (patches.astype(self.dtype) @ kernel.astype(self.dtype)) + bias.astype(self.dtype)


class ConvEncoder(nn.Module):
    """`Conv2D -> ReLU` per layer (VALID padding), then flatten: `[..., H, W, C] -> [..., F]`.

    Sized for MinAtar's 10x10 grids by default: two 3x3 stride-1 convs give 6x6x32 = 1152 features.
    """

    channels: tuple[int, ...] = (16, 32)
    kernel_sizes: tuple[int, ...] = (3, 3)
    strides: tuple[int, ...] = (1, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: chex.Array) -> chex.Array:
        if not len(self.channels) == len(self.kernel_sizes) == len(self.strides):
            raise ValueError(f"ConvEncoder: channels={self.channels}, kernel_sizes={self.kernel_sizes} and "
                             f"strides={self.strides} must have the same length (one entry per conv layer)")
        if x.ndim < 3:
            raise ValueError(f"ConvEncoder expects images [..., H, W, C], got shape {x.shape}")
        batch_shape = x.shape[:-3]
        x = x.reshape((-1, *x.shape[-3:]))
        for layer, (channels, kernel_size, stride) in enumerate(zip(self.channels, self.kernel_sizes, self.strides)):
            x = nn.relu(Conv2D(channels, kernel_size, stride, self.dtype, name=f"conv_{layer}")(x))
        return x.reshape((*batch_shape, -1)).astype(jnp.float32)


class QNetwork(nn.Module):
    """Categorical Q-network of discrete BRC: encoder, task embedding, BroNet trunk, `num_actions x num_bins` logits.

    The encoder is chosen by the observation's rank (`obs.ndim - task_ids.ndim`): a `ConvEncoder` for images
    `[H, W, C]`, `Dense -> LN -> ReLU` for vectors `[O]`. The unit-norm task embedding is joined after the encoder
    (skipped when `num_tasks == 1`). Observations of any dtype (MinAtar's are bool) are cast to float32 here.
    """

    num_actions: int
    num_bins: int
    num_tasks: int
    width: int
    depth: int
    embed_dim: int = 32
    conv_channels: tuple[int, ...] = (16, 32)
    conv_kernel_sizes: tuple[int, ...] = (3, 3)
    conv_strides: tuple[int, ...] = (1, 1)
    vector_encoder_width: int = 256
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        if self.num_tasks > 1:
            self.task_embedding = TaskEmbedding(self.num_tasks, self.embed_dim)
        # Only the encoder that matches the observations is ever called, so only its parameters exist.
        self.conv_encoder = ConvEncoder(self.conv_channels, self.conv_kernel_sizes, self.conv_strides, self.dtype)
        self.vector_encoder = nn.Dense(self.vector_encoder_width, dtype=self.dtype, param_dtype=jnp.float32,
                                       kernel_init=_kernel_init, bias_init=_bias_init)
        self.vector_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)
        self.trunk = BroNet(self.width, self.depth, self.num_actions * self.num_bins, self.dtype)

    def embed(self, task_ids: chex.Array) -> chex.Array:  # int[...] -> [..., embed_dim] (or [..., 0])
        """The unit-norm task embedding, or an empty `[..., 0]` array for a single-task network."""
        if self.num_tasks == 1:
            return jnp.zeros((*task_ids.shape, 0), jnp.float32)
        return self.task_embedding(task_ids)

    def encode(self, obs: chex.Array, task_ids: chex.Array) -> chex.Array:
        """`obs [..., *O]` (O = (H, W, C) or (D,)) -> features `[..., F]`."""
        chex.assert_equal_shape_prefix([obs, task_ids], task_ids.ndim)
        obs = obs.astype(jnp.float32)
        obs_rank = obs.ndim - task_ids.ndim
        if obs_rank == 3:
            return self.conv_encoder(obs)
        if obs_rank == 1:
            return nn.relu(self.vector_norm(self.vector_encoder(obs)))
        raise ValueError(f"QNetwork expects image [..., H, W, C] or vector [..., D] observations; got obs shape "
                         f"{obs.shape} with task_ids shape {task_ids.shape} (observation rank {obs_rank})")

    def __call__(self, obs: chex.Array, task_ids: chex.Array) -> chex.Array:
        """`obs [..., *O]`, `task_ids int[...]` -> logits `[..., num_actions, num_bins]` (float32)."""
        features = self.encode(obs, task_ids).astype(jnp.float32)
        inputs = jnp.concatenate([features, self.embed(task_ids)], axis=-1)
        logits = self.trunk(inputs)
        return logits.reshape((*task_ids.shape, self.num_actions, self.num_bins))
