"""The categorical return distribution: support, C51 projection, cross-entropy, expectation.

A return distribution is a probability vector over `K` fixed atoms (the `support`, evenly spaced on
`[v_min, v_max]`). The TD target shifts every atom (`z' = r + gamma * z`), which moves mass off the support's grid;
`project` puts it back by splitting each mass between the two neighbouring support points in proportion to distance.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np


def make_support(num_bins: int = 101, v_min: float = -10.0, v_max: float = 10.0) -> chex.Array:
    """`num_bins` evenly spaced atoms on `[v_min, v_max]`, float32, shape `[K]`.

    The arguments are static Python numbers; each atom is the float32 nearest to the exact grid point (so the support
    is symmetric and contains 0 exactly when `v_min == -v_max` and `num_bins` is odd).
    """
    if num_bins < 2:
        raise ValueError(f"make_support: num_bins must be >= 2, got {num_bins}")
    if not v_min < v_max:
        raise ValueError(f"make_support: need v_min < v_max, got v_min={v_min}, v_max={v_max}")
    # Built in float64 by NumPy and rounded once: jnp.linspace in float32 puts the middle atom of [-10, 10] at -3e-7.
    return jnp.asarray(np.linspace(v_min, v_max, num_bins, dtype=np.float64), dtype=jnp.float32)


def project(atoms: chex.Array, probs: chex.Array, support: chex.Array) -> chex.Array:
    """C51 projection of masses `probs` at positions `atoms` (`[..., N]`) onto `support` (`[K]`); returns `[..., K]`.

    Positions are clipped to `[support[0], support[-1]]`; a position between support points `s_j <= x <= s_{j+1}` gives
    `(s_{j+1} - x) / (s_{j+1} - s_j)` of its mass to `j` and the rest to `j + 1`; a position on `s_j` gives all its mass
    to `j`. `support` must be increasing (v_min, v_max and the spacing are read from it). Usually `N == K`.
    """
    chex.assert_rank(support, 1)
    chex.assert_equal_shape([atoms, probs])
    num_bins = support.shape[0]
    if num_bins < 2:
        raise ValueError(f"project: the support needs at least 2 atoms, got shape {support.shape}")
    support = support.astype(jnp.float32)
    atoms = jnp.clip(atoms.astype(jnp.float32), support[0], support[-1])
    probs = probs.astype(jnp.float32)

    # Each support point j owns a "hat" that is 1 at s_j and falls linearly to 0 at its two neighbours; the weight of
    # position x on atom j is the hat's height at x, so the mass is split between the two bracketing atoms by distance
    # and the weights of every position sum to 1. There is no floor/ceil index pair that could coincide and drop the
    # mass of a position that sits exactly on an atom. The actual gaps of `support` are used (not one global spacing),
    # and the numerators are differences that are exactly 0 at a neighbour (gap - gap), so a position on s_j gives
    # exactly 0 to its neighbours; its own weight is set to exactly 1 below, because XLA's float32 division is not
    # always correctly rounded (gap / gap can come out as 1 - ulp).
    gaps = jnp.diff(support)  # [K-1]
    # The first atom has no left neighbour and the last none on the right; clipping keeps x on the inner side, so any
    # positive placeholder gap does there.
    left_gap = jnp.concatenate([gaps[:1], gaps])  # [K]
    right_gap = jnp.concatenate([gaps, gaps[-1:]])  # [K]

    offset = atoms[..., :, None] - support  # [..., N, K]: x_i - s_j
    hat = jnp.where(offset >= 0, (right_gap - offset) / right_gap, (left_gap + offset) / left_gap)
    weights = jnp.where(offset == 0, 1.0, jnp.clip(hat, 0.0, 1.0))  # [..., N, K]
    # A sum rather than an einsum: a float32 matmul may run in TF32 on GPUs, which would blur the target.
    return jnp.sum(probs[..., :, None] * weights, axis=-2)


def cross_entropy(logits: chex.Array, target_probs: chex.Array) -> chex.Array:
    """`-sum(target_probs * log_softmax(logits))` over the last axis: `[..., K] -> [...]`, float32."""
    chex.assert_equal_shape([logits, target_probs])
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(target_probs.astype(jnp.float32) * log_probs, axis=-1)


def expectation(probs: chex.Array, support: chex.Array) -> chex.Array:
    """Mean of the categorical distribution `probs` (`[..., K]`) on `support` (`[K]`): `[...]`, float32."""
    chex.assert_rank(support, 1)
    chex.assert_axis_dimension(probs, -1, support.shape[0])
    return jnp.sum(probs.astype(jnp.float32) * support.astype(jnp.float32), axis=-1)
