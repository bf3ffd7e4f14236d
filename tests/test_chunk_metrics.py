"""The per-chunk metric reduction against a plain NumPy loop over the same random iterations."""

import jax
import jax.numpy as jnp
import numpy as np

from purejaxmt import chunk_metrics
from purejaxmt.envs.base import EpisodeStats

T, E, N = 3, 4, 7


def random_iterations(seed: int):
    rng = np.random.default_rng(seed)
    finished = rng.random((N, T, E)) < 0.2
    finished[:, 2] = False                                   # task 2 finishes no episode: its means must be NaN
    return dict(
        finished=finished,
        finished_return=rng.normal(size=(N, T, E)).astype(np.float32) * 10,
        finished_length=rng.integers(1, 1000, size=(N, T, E)).astype(np.int32),
        nonfinite=rng.random((N, T, E)) < 0.1,
        reward=rng.normal(size=(N, T, E)).astype(np.float32),
        learning=np.arange(N) >= 3,                          # a random phase of 3 iterations, then updates
        loss=rng.normal(size=N).astype(np.float32),
    )


def reference(it):
    """float64 NumPy, written from the docstring: per task means over finished episodes, update means over learning
    iterations."""
    f = it["finished"].astype(np.float64)
    episodes = f.sum(axis=(0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        ret = (it["finished_return"] * f).sum(axis=(0, 2)) / episodes
        length = (it["finished_length"] * f).sum(axis=(0, 2)) / episodes
    return {
        "return": np.where(episodes > 0, ret, np.nan),
        "episode_length": np.where(episodes > 0, length, np.nan),
        "episodes": episodes,
        "reward_mean": it["reward"].astype(np.float64).sum(axis=(0, 2)) / (N * E),
        "nonfinite_resets": it["nonfinite"].sum(axis=(0, 2)),
        "loss": it["loss"][it["learning"]].astype(np.float64).mean() if it["learning"].any() else np.nan,
    }


def reduce_in_scan(it):
    def step(totals, x):
        stats = EpisodeStats(return_=jnp.zeros((T, E)), length=jnp.zeros((T, E), jnp.int32),
                             finished=x["finished"], finished_return=x["finished_return"],
                             finished_length=x["finished_length"], nonfinite=x["nonfinite"],
                             nonfinite_count=jnp.zeros((T,), jnp.int32))
        return chunk_metrics.accumulate(totals, stats, x["reward"], x["learning"], {"loss": x["loss"]}), None

    totals = chunk_metrics.init_totals(T, {"loss": jnp.zeros(())})
    totals, _ = jax.lax.scan(step, totals, {k: jnp.asarray(v) for k, v in it.items()})
    return chunk_metrics.finalize(totals, env_steps_per_task=N * E)


def test_chunk_metrics_match_numpy():
    it = random_iterations(0)
    got, want = jax.jit(reduce_in_scan)(it), reference(it)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name], np.float64), want[name], rtol=1e-5, err_msg=name)
    assert np.isnan(got["return"][2]) and got["episodes"][2] == 0 and got["episodes"][:2].min() > 0


def test_update_means_are_nan_without_updates():
    it = random_iterations(1)
    it["learning"][:] = False                                # a chunk entirely in the random phase
    got = reduce_in_scan(it)
    assert np.isnan(got["loss"])
    np.testing.assert_allclose(got["episodes"], reference(it)["episodes"])
