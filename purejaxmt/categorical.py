"""The categorical return distribution: support, C51 projection, cross-entropy, expectation.

A return distribution is a probability vector over `K` fixed atoms (the `support`, evenly spaced on
`[v_min, v_max]`). The TD target shifts every atom (`z' = r + gamma * z`), which moves mass off the support's grid;
`project` puts it back by splitting each mass between the two neighbouring support points in proportion to distance.
"""

from __future__ import annotations

import math

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


def _bracket(atoms: chex.Array, probs: chex.Array, support: chex.Array) -> tuple[chex.Array, chex.Array, chex.Array]:
    """For each position: the lower bracketing index `l` in `[0, K-2]` and the masses for `l` and `l + 1`.

    Elementwise over `[..., N]` (a gather from a `[K-1, 4]` table is the only non-elementwise step), so its cost is
    O(N) per row whatever the leading axes are. `l` is the largest index with `s_l <= x` (clipped to `K - 2`), found
    from the even spacing and then corrected by one step either way with exact comparisons against the actual support
    values: float rounding of `(x - s_0) / dz` lands one bin off for some positions on or within a few float steps of
    an atom (hundreds of them around a 101-atom support), and a position on an atom must not lose any of its mass. The
    correction makes the bracket exact as long as the support is evenly spaced up to rounding (every point less than
    one gap off the grid), which `make_support` and `jnp.linspace` supports are.
    """
    num_bins = support.shape[0]
    support = support.astype(jnp.float32)
    x = jnp.clip(atoms.astype(jnp.float32), support[0], support[-1])
    probs = probs.astype(jnp.float32)

    spacing = (support[-1] - support[0]) / (num_bins - 1)
    # Whatever the int conversion makes of NaN or huge values, the clip keeps every guess (and every index below) in
    # bounds, so the gather and the scatter can promise it.
    guess = jnp.clip(jnp.floor((x - support[0]) / spacing).astype(jnp.int32), 0, num_bins - 2)
    # Row j holds (s_{j-1}, s_j, s_{j+1}, s_{j+2}), padded with -inf / +inf: one gather gives everything the one-step
    # correction and the weights need, instead of one gather per lookup.
    padded = jnp.concatenate([jnp.full((1,), -jnp.inf, jnp.float32), support, jnp.full((1,), jnp.inf, jnp.float32)])
    table = jnp.stack([padded[:-3], padded[1:-2], padded[2:-1], padded[3:]], axis=-1)  # [K-1, 4]
    near = table.at[guess].get(mode="promise_in_bounds")  # [..., N, 4]
    below, at, above, above2 = near[..., 0], near[..., 1], near[..., 2], near[..., 3]
    step_down = x < at  # never at guess 0: x >= s_0 after the clip
    step_up = (x >= above) & (guess < num_bins - 2)  # x == s_{K-1} stays in the last bracket, with upper weight 1
    lower_index = guess - step_down.astype(jnp.int32) + step_up.astype(jnp.int32)
    lower_value = jnp.where(step_down, below, jnp.where(step_up, above, at))
    upper_value = jnp.where(step_down, at, jnp.where(step_up, above2, above))

    # x - s_l is exactly 0 on s_l, so a position on an atom keeps all its mass there (the lower weight is exactly 1).
    # The only position with x == s_{l+1} is the last atom; its weight is set to exactly 1 because XLA's float32
    # division is not always correctly rounded (gap / gap can come out as 1 - ulp); the clip guards the same rounding.
    upper_weight = jnp.where(
        x >= upper_value, 1.0, jnp.clip((x - lower_value) / (upper_value - lower_value), 0.0, 1.0)
    )
    return lower_index, probs * (1.0 - upper_weight), probs * upper_weight


def project(atoms: chex.Array, probs: chex.Array, support: chex.Array) -> chex.Array:
    """C51 projection of masses `probs` at positions `atoms` (`[..., N]`) onto `support` (`[K]`); returns `[..., K]`.

    Positions are clipped to `[support[0], support[-1]]`; a position between support points `s_j <= x <= s_{j+1}` gives
    `(s_{j+1} - x) / (s_{j+1} - s_j)` of its mass to `j` and the rest to `j + 1`; a position on `s_j` gives all its mass
    to `j`. `support` must be increasing and evenly spaced up to float rounding (v_min, v_max and the spacing are read
    from it; the brackets are checked against its actual values). Usually `N == K`.

    O(N) work per row: each position's two masses are scatter-added into its row of the output, so the cost per row
    is the same plainly and under `jax.vmap` (the runner vmaps over seeds). The `[..., N, K]` "hat" weights this
    replaces cost O(N K) and, on XLA:CPU, got several times slower still under a size-1 vmap; a one-hot einsum is too
    (and needs Precision.HIGHEST to stay out of TF32 on GPUs). Timings: experiments/bench_projection.py.
    """
    chex.assert_rank(support, 1)
    chex.assert_equal_shape([atoms, probs])
    num_bins = support.shape[0]
    if num_bins < 2:
        raise ValueError(f"project: the support needs at least 2 atoms, got shape {support.shape}")
    lower_index, lower_mass, upper_mass = _bracket(atoms, probs, support)

    # One segment sum over the flattened rows: segment r * K + l is bin l of row r. jax.vmap over this adds only a
    # batch dimension to the one scatter, so the cost per row does not depend on the leading axes.
    batch_shape, num_positions = atoms.shape[:-1], atoms.shape[-1]
    num_rows = math.prod(batch_shape)
    row_start = (jnp.arange(num_rows, dtype=jnp.int32) * num_bins)[:, None]  # [R, 1]
    segment = (row_start + lower_index.reshape(num_rows, num_positions)).reshape(-1)  # [R * N]
    projected = jax.ops.segment_sum(
        jnp.concatenate([lower_mass.reshape(-1), upper_mass.reshape(-1)]),
        jnp.concatenate([segment, segment + 1]),
        num_segments=num_rows * num_bins,
        mode="promise_in_bounds",  # every index is in range by construction (see _bracket)
    )
    return projected.reshape(*batch_shape, num_bins)


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
