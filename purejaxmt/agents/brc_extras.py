"""What continuous BRC can do beside the method: observation statistics and transfer's new task rows.

`agents/brc.py` reads as the paper's method section; these capabilities are not in the paper, so they live here:

- observation statistics: the running mean and variance of every observation the updates drew (Chan et al.'s
  parallel merge), and the standardised observations the networks read when `normalize_observations` is on (the
  `fast` preset; FastTD3 and REPPO do it in the massively parallel regime);
- transfer (`purejaxmt.studies.transfer`): `new_rows_update`, Adam's bias correction of the new tasks' embedding rows at
  their own step count, and `freeze`, the `embedding` mode that puts everything but those rows back.

Pure functions of arrays; `brc.Agent.update` calls them.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from purejaxmt.treepaths import path_names

Params = Any

# ----------------------------------------------------------------------------------------------------------------------
# Observation statistics
# ----------------------------------------------------------------------------------------------------------------------
OBS_CLIP = 10.0


def observation_statistics(mean: jax.Array, var: jax.Array, count: jax.Array, obs: jax.Array
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The running `(mean, var, count)` of observations with a batch `obs [B, O]` merged in (Chan et al.'s parallel
    update: exact for any batch sizes, no sum of squares that loses precision)."""
    chex.assert_rank(obs, 2)
    obs = obs.astype(jnp.float32)
    batch_count = jnp.asarray(obs.shape[0], jnp.float32)
    batch_mean, batch_var = obs.mean(axis=0), obs.var(axis=0)
    total = count + batch_count
    delta = batch_mean - mean
    new_mean = mean + delta * (batch_count / total)
    squares = var * count + batch_var * batch_count + jnp.square(delta) * (count * batch_count / total)
    return new_mean, squares / total, total


def normalized_observations(learner: Any, hyper: Any, obs: jax.Array) -> jax.Array:
    """`obs [..., O]` as the networks read it: standardised by the learner's running statistics (clipped to
    +-`OBS_CLIP`) when `hyper.normalize_observations`, else as float32. Before any update the statistics are
    mean 0, variance 1: the identity."""
    obs = obs.astype(jnp.float32)
    standardised = jnp.clip((obs - learner.obs_mean) * jax.lax.rsqrt(learner.obs_var + 1e-8), -OBS_CLIP, OBS_CLIP)
    return jnp.where(hyper.normalize_observations > 0, standardised, obs)


# ----------------------------------------------------------------------------------------------------------------------
# Transfer: the new tasks' embedding rows
# ----------------------------------------------------------------------------------------------------------------------
def new_rows_update(new_task_rows: jax.Array, updates: Params, opt_state: optax.OptState, params: Params,
                    learning_rate: jax.Array, weight_decay: jax.Array, num_updates: jax.Array,
                    b1: float, b2: float, eps: float) -> Params:
    """The AdamW `updates` of the critic with the new tasks' embedding rows (`new_task_rows`, bool `[T]`) recomputed
    with Adam's bias correction at THEIR step count, `num_updates + 1` (a transfer run counts its updates from 0),
    not the critic optimiser's count, which carries on from the source run. Their moments start at zero
    (`transfer.grow`), so with the source's count (bias correction ~1) their first steps would be up to ~6.6x the
    learning rate; with their own they are AdamW's from a fresh start. Other rows and leaves keep `updates`.
    `opt_state` is the optimiser state after this step (`optax.adamw(learning_rate, b1, b2, eps, weight_decay)`)."""
    adam_state = opt_state[0]  # optax.adamw = chain(scale_by_adam, add_decayed_weights, scale_by_learning_rate)
    step = (num_updates + 1).astype(jnp.float32)

    def leaf(path: tuple, update: jax.Array, mu: jax.Array, nu: jax.Array, param: jax.Array) -> jax.Array:
        if "task_embedding" not in path_names(path):
            return update
        adam = (mu / (1.0 - b1**step)) / (jnp.sqrt(nu / (1.0 - b2**step)) + eps)
        own = -learning_rate * (adam + weight_decay * param)
        return jnp.where(new_task_rows[:, None], own, update)

    return jax.tree_util.tree_map_with_path(leaf, updates, adam_state.mu, adam_state.nu, params)


def freeze(new_task_rows: jax.Array, before: Any, after: Any, frozen: jax.Array) -> Any:
    """Transfer's `embedding` mode when `frozen`: the learner `after` with everything but the new tasks' embedding
    rows (and their optimiser moments, and the critic optimiser's step count) put back to `before`."""
    def critic_leaf(path: tuple, old: jax.Array, new: jax.Array) -> jax.Array:
        if "task_embedding" in path_names(path):       # [T, D]: the new rows learn
            learns = new_task_rows[:, None]
        elif old.ndim == 0 and jnp.issubdtype(old.dtype, jnp.integer):
            learns = jnp.ones((), bool)     # Adam's step count
        else:
            learns = jnp.zeros((), bool)
        return jnp.where(frozen & ~learns, old, new)

    def critic_tree(name: str) -> Any:
        return jax.tree_util.tree_map_with_path(critic_leaf, getattr(before, name), getattr(after, name))

    def kept(name: str) -> Any:
        return jax.tree.map(lambda old, new: jnp.where(frozen, old, new), getattr(before, name), getattr(after, name))

    return after.replace(
        **{name: critic_tree(name) for name in ("critic_params", "critic_target_params", "critic_opt_state")},
        **{name: kept(name) for name in ("actor_params", "actor_opt_state", "log_temperature",
                                         "temperature_opt_state", "obs_mean", "obs_var", "obs_count")})
