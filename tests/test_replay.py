"""Tests of the task-axis ring buffer: ring order, task balance, written slots only, dtypes, vmap, sizes."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purejaxmt import replay

# Compiled once per shape and reused by every test (the state is donated, as in training).
_add = jax.jit(replay.add, donate_argnums=0)
_sample = jax.jit(replay.sample, static_argnames="batch_size")

SENTINEL = -1  # written into every slot before the first add: a sampled SENTINEL is an unwritten slot


def _example(num_tasks: int) -> dict:
    """One env's item per task: its task id and a per-task running item id."""
    return {"task": jnp.zeros((num_tasks,), jnp.int32), "item": jnp.zeros((num_tasks,), jnp.int32)}


def _batch(num_tasks: int, envs_per_task: int, first_item: int) -> dict:
    """Items `first_item .. first_item + E - 1` of every task, tagged with the task id."""
    task = np.repeat(np.arange(num_tasks, dtype=np.int32)[:, None], envs_per_task, axis=1)
    item = np.broadcast_to(first_item + np.arange(envs_per_task, dtype=np.int32), (num_tasks, envs_per_task))
    return {"task": jnp.asarray(task), "item": jnp.asarray(item)}


def _empty(num_tasks: int, capacity: int) -> replay.ReplayState:
    state = replay.init(_example(num_tasks), capacity)
    return state.replace(data=jax.tree.map(lambda x: jnp.full_like(x, SENTINEL), state.data))


def _fill(num_tasks: int, envs_per_task: int, capacity: int, num_adds: int) -> replay.ReplayState:
    state = _empty(num_tasks, capacity)
    for k in range(num_adds):
        state = _add(state, _batch(num_tasks, envs_per_task, k * envs_per_task))
    return state


def test_fill_then_wrap_overwrites_the_oldest_items_in_order():
    num_tasks, envs_per_task, capacity = 2, 3, 7  # C is not a multiple of E

    state = _fill(num_tasks, envs_per_task, capacity, num_adds=2)  # items 0..5
    np.testing.assert_array_equal(state.size, [6, 6])
    np.testing.assert_array_equal(state.pointer, [6, 6])
    for t in range(num_tasks):
        np.testing.assert_array_equal(state.data["item"][t], [0, 1, 2, 3, 4, 5, SENTINEL])
        np.testing.assert_array_equal(state.data["task"][t], [t] * 6 + [SENTINEL])

    state = _add(state, _batch(num_tasks, envs_per_task, 6))  # items 6, 7, 8: 7 and 8 replace 0 and 1
    np.testing.assert_array_equal(state.size, [7, 7])
    np.testing.assert_array_equal(state.pointer, [2, 2])
    for t in range(num_tasks):
        np.testing.assert_array_equal(state.data["item"][t], [7, 8, 2, 3, 4, 5, 6])

    for k in (3, 4):  # items 9..14: the ring holds the newest 7 items, 8..14, the next write goes to slot 1
        state = _add(state, _batch(num_tasks, envs_per_task, k * envs_per_task))
    np.testing.assert_array_equal(state.size, [7, 7])
    np.testing.assert_array_equal(state.pointer, [1, 1])
    for t in range(num_tasks):
        np.testing.assert_array_equal(state.data["item"][t], [14, 8, 9, 10, 11, 12, 13])


def _by_task(batch: dict, task_id: jax.Array, num_tasks: int) -> list[np.ndarray]:
    """The sampled items of each task."""
    task_id = np.asarray(task_id)
    return [np.asarray(batch["item"])[task_id == t] for t in range(num_tasks)]


def test_sample_is_task_balanced():
    num_tasks, per_task = 3, 200
    state = _fill(num_tasks, envs_per_task=4, capacity=8, num_adds=3)
    batch, task_id = _sample(state, jax.random.key(0), batch_size=num_tasks * per_task)
    assert batch["task"].shape == task_id.shape == (num_tasks * per_task,)
    np.testing.assert_array_equal(batch["task"], task_id)  # each row comes from the task it names
    np.testing.assert_array_equal(np.bincount(np.asarray(task_id)), [per_task] * num_tasks)


def test_a_batch_not_divisible_by_the_tasks_spreads_the_remainder_evenly():
    """The paper's batch of 1024 on 3 tasks: 341 rows each, and the one left over goes to a random task, so that
    every task's expected share is 1024 / 3."""
    num_tasks, batch_size, num_draws = 3, 1024, 600
    state = _fill(num_tasks, envs_per_task=4, capacity=8, num_adds=3)
    sample = jax.jit(jax.vmap(partial(replay.sample, batch_size=batch_size), in_axes=(None, 0)))
    batch, task_id = sample(state, jax.random.split(jax.random.key(3), num_draws))
    np.testing.assert_array_equal(batch["task"], task_id)
    counts = np.stack([np.bincount(np.asarray(row), minlength=num_tasks) for row in task_id])  # [draws, T]
    assert set(counts.ravel().tolist()) == {341, 342} and (counts.sum(axis=1) == batch_size).all()
    # The extra row's task: Binomial(600, 1/3) per task, mean 200, std 11.5; 60 is more than 5 std.
    np.testing.assert_allclose((counts == 342).sum(axis=0), num_draws / num_tasks, atol=60)

    # With 5 rows over 3 tasks the 2 extra rows go to 2 different tasks.
    task_id = jax.jit(jax.vmap(partial(replay.balanced_task_ids, num_tasks=3, batch_size=5)))(
        jax.random.split(jax.random.key(4), 50))
    for row in np.asarray(task_id):
        assert sorted(np.bincount(row, minlength=3).tolist()) == [1, 2, 2]


def test_sample_is_uniform_over_written_slots():
    # Half the ring written: 5 items per task into C = 10.
    num_tasks, per_task = 2, 5000
    state = _fill(num_tasks, envs_per_task=5, capacity=10, num_adds=1)
    batch, task_id = _sample(state, jax.random.key(1), batch_size=num_tasks * per_task)
    for items in _by_task(batch, task_id, num_tasks):
        counts = np.bincount(items, minlength=5)
        assert counts.shape == (5,), f"sampled an unwritten slot: counts {counts}"
        # Each count is Binomial(5000, 0.2): mean 1000, std 28; 150 is more than 5 std.
        np.testing.assert_allclose(counts, per_task / 5, atol=150)


def test_slots_of_a_large_ring_are_drawn_as_integers():
    """Slot indices are integers, not floor(u * size) of a float32 u: in a ring of 2**24 items that draws only even
    slots (u has 2**23 levels in [0.5, 1)), and no slot past 2**24 at all."""
    size = 2**24 + 2**22
    state = replay.ReplayState(data={"item": jnp.arange(size, dtype=jnp.int32)[None]},
                               pointer=jnp.zeros((1,), jnp.int32), size=jnp.full((1,), size, jnp.int32))
    batch, _ = replay.sample(state, jax.random.key(5), batch_size=4096)
    items = np.asarray(batch["item"])
    assert (items >= 0).all() and (items < size).all()
    assert 1800 < (items % 2).sum() < 2300  # odd slots are drawn as often as even ones
    assert 600 < (items >= 2**24).sum() < 1050  # slots past 2**24 are drawn (a fifth of the ring)
    assert 1800 < (items >= size // 2).sum() < 2300


# A few fixed (T, E, C) shapes so that hypothesis examples reuse the compiled add/sample.
SHAPES = [(1, 1, 1), (2, 1, 3), (3, 4, 4), (2, 3, 7), (2, 5, 6)]
PER_TASK = 16


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from(SHAPES), num_adds=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_never_samples_an_unwritten_slot(shape, num_adds, seed):
    num_tasks, envs_per_task, capacity = shape
    state = _fill(num_tasks, envs_per_task, capacity, num_adds)
    written = num_adds * envs_per_task
    np.testing.assert_array_equal(state.size, min(written, capacity))
    np.testing.assert_array_equal(state.pointer, written % capacity)

    batch, task_id = _sample(state, jax.random.key(seed), batch_size=num_tasks * PER_TASK + 1)
    items = np.asarray(batch["item"])
    assert items.shape == (num_tasks * PER_TASK + 1,)
    assert (items != SENTINEL).all()
    # Only the newest `capacity` items are still in the ring.
    assert (items >= max(written - capacity, 0)).all() and (items < written).all()
    np.testing.assert_array_equal(batch["task"], task_id)


def test_uint8_and_bool_are_stored_and_sampled_as_they_are():
    num_tasks, envs_per_task = 2, 4
    example = {"obs": jnp.zeros((num_tasks, 4, 4, 2), jnp.uint8), "terminal": jnp.zeros((num_tasks,), jnp.bool_)}
    rng = np.random.default_rng(0)
    batch = {
        "obs": jnp.asarray(rng.integers(0, 256, (num_tasks, envs_per_task, 4, 4, 2), dtype=np.uint8)),
        "terminal": jnp.asarray(rng.random((num_tasks, envs_per_task)) < 0.5),
    }
    state = replay.init(example, capacity=envs_per_task)
    assert state.data["obs"].dtype == jnp.uint8 and state.data["terminal"].dtype == jnp.bool_

    state = _add(state, batch)
    assert state.data["obs"].dtype == jnp.uint8 and state.data["terminal"].dtype == jnp.bool_
    np.testing.assert_array_equal(state.data["obs"], batch["obs"])  # C == E: the ring is exactly the batch
    np.testing.assert_array_equal(state.data["terminal"], batch["terminal"])

    sampled, task_id = _sample(state, jax.random.key(0), batch_size=num_tasks * 8)
    assert sampled["obs"].dtype == jnp.uint8 and sampled["terminal"].dtype == jnp.bool_
    for row, t in zip(np.asarray(sampled["obs"]).reshape(num_tasks * 8, -1), np.asarray(task_id)):
        stored = np.asarray(state.data["obs"][t]).reshape(envs_per_task, -1)
        assert (stored == row).all(axis=1).any()  # every sampled item is bit-for-bit one of its task's items


def test_vmap_over_seeds_gives_different_samples():
    num_seeds, num_tasks, envs_per_task, capacity, per_task = 3, 2, 8, 16, 32
    example = _example(num_tasks)
    init = jax.vmap(lambda _: replay.init(example, capacity))
    add = jax.jit(jax.vmap(replay.add), donate_argnums=0)
    sample = jax.jit(jax.vmap(partial(replay.sample, batch_size=num_tasks * per_task)))

    states = init(jnp.arange(num_seeds))
    for k in range(2):  # the same items in every seed's buffer: any difference comes from the keys
        batch = jax.tree.map(lambda x: jnp.stack([x] * num_seeds), _batch(num_tasks, envs_per_task, k * envs_per_task))
        states = add(states, batch)
    np.testing.assert_array_equal(states.size, capacity)

    keys = jax.random.split(jax.random.key(0), num_seeds)
    items = np.asarray(sample(states, keys)[0]["item"])  # [S, B]
    assert items.shape == (num_seeds, num_tasks * per_task)
    for a in range(num_seeds):
        for b in range(a + 1, num_seeds):
            assert not np.array_equal(items[a], items[b]), f"seeds {a} and {b} drew the same sample"
    # vmap changes nothing per seed.
    one = jax.tree.map(lambda x: x[1], states)
    np.testing.assert_array_equal(items[1], replay.sample(one, keys[1], num_tasks * per_task)[0]["item"])


def test_a_batch_smaller_than_the_task_count_names_both_numbers():
    state = _fill(3, 1, 4, 1)
    with pytest.raises(ValueError, match=r"batch_size=2 .* number of tasks \(3\)"):
        replay.sample(state, jax.random.key(0), 2)


def test_more_items_per_task_than_capacity_is_an_error():
    state = _empty(2, 3)
    with pytest.raises(ValueError, match=r"4 items per task .* capacity is 3"):
        replay.add(state, _batch(2, 4, 0))


def test_batch_must_match_the_stored_dtype():
    state = _empty(2, 3)
    batch = _batch(2, 1, 0)
    with pytest.raises(AssertionError, match="item"):
        replay.add(state, {**batch, "item": batch["item"].astype(jnp.float32)})


@pytest.mark.parametrize("capacity", [0, 2.5, replay.MAX_CAPACITY + 1])
def test_invalid_capacity_is_an_error(capacity):
    with pytest.raises(ValueError, match="capacity"):
        replay.init(_example(2), capacity)


def test_nbytes_equals_the_allocated_bytes():
    num_tasks, capacity = 3, 11
    example = {
        "obs": jnp.zeros((num_tasks, 10, 10, 4), jnp.uint8),
        "action": jnp.zeros((num_tasks, 6), jnp.float32),
        "reward": jnp.zeros((num_tasks,), jnp.float32),
        "terminal": jnp.zeros((num_tasks,), jnp.bool_),
    }
    allocated = sum(leaf.nbytes for leaf in jax.tree.leaves(replay.init(example, capacity)))
    assert replay.nbytes(example, capacity) == allocated
    # The runner may ask before anything exists: shapes and dtypes are enough.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), example)
    assert replay.nbytes(abstract, capacity) == allocated


_sample_windows = jax.jit(replay.sample_windows, static_argnames=("batch_size", "length", "stride"))


@pytest.mark.parametrize("num_adds, length", [(7, 3), (2, 2), (3, 1)])
def test_windows_are_consecutive_items_of_one_env_and_cover_every_valid_start(num_adds, length):
    """Item k * E + e is env e's step k. A ring of 12 slots and 3 envs keeps the last 4 steps of each env."""
    num_tasks, envs_per_task, capacity = 2, 3, 12
    state = _fill(num_tasks, envs_per_task, capacity, num_adds)
    windows, task_id = _sample_windows(state, jax.random.PRNGKey(num_adds), batch_size=2 * 3000 + 1, length=length,
                                       stride=envs_per_task)
    item, task, task_id = np.asarray(windows["item"]), np.asarray(windows["task"]), np.asarray(task_id)
    assert item.shape == (2 * 3000 + 1, length)
    assert (task == task_id[:, None]).all()
    assert (item != SENTINEL).all()
    env, step = item % envs_per_task, item // envs_per_task
    assert (env == env[..., :1]).all()  # one env per window
    np.testing.assert_array_equal(np.diff(step, axis=-1), 1)  # consecutive steps, oldest first
    oldest_kept = max(0, num_adds - capacity // envs_per_task)
    expected_starts = {(e, s) for e in range(envs_per_task) for s in range(oldest_kept, num_adds - length + 1)}
    for t in range(num_tasks):
        rows = task_id == t
        assert set(zip(env[rows, 0].tolist(), step[rows, 0].tolist())) == expected_starts


def test_windows_need_a_capacity_that_keeps_envs_aligned():
    state = _fill(1, 3, 10, 2)
    with pytest.raises(ValueError, match="multiple of the stride"):
        replay.sample_windows(state, jax.random.PRNGKey(0), batch_size=4, length=2, stride=3)
    with pytest.raises(ValueError, match="larger than 12"):
        replay.sample_windows(_fill(1, 3, 12, 2), jax.random.PRNGKey(0), batch_size=4, length=5, stride=3)
    replay.sample_windows(state, jax.random.PRNGKey(0), batch_size=4, length=1, stride=3)  # no window to misalign


# ---------------------------------------------------------------------------------------------- observation once


def _stream(rng: np.random.Generator, num_tasks: int, envs_per_task: int, num_adds: int, end_rate: float) -> list:
    """Transition batches `[T, E, ...]` as an env gives them: `next_obs` is the next batch's `obs` unless the
    episode ended (terminal, truncated or both), where it is a true final observation the next batch never shows."""
    shape = (num_tasks, envs_per_task)
    obs = rng.normal(size=(*shape, 3)).astype(np.float32)
    batches = []
    for _ in range(num_adds):
        terminal, truncated = rng.random(shape) < end_rate, rng.random(shape) < end_rate
        ended = (terminal | truncated)[..., None]
        following = rng.normal(size=(*shape, 3)).astype(np.float32)      # what the env acts on next
        final = rng.normal(size=(*shape, 3)).astype(np.float32)
        batches.append({"obs": obs, "action": rng.integers(0, 5, shape).astype(np.int32),
                        "reward": rng.normal(size=shape).astype(np.float32),
                        "next_obs": np.where(ended, final, following), "terminal": terminal, "truncated": truncated})
        obs = following
    return batches


def _both_layouts(batches: list, capacity: int, final_capacity: int | None = None):
    example = {name: jnp.asarray(value[:, 0]) for name, value in batches[0].items()}
    plain = replay.init(example, capacity)
    once = replay.init(example, capacity, envs_per_task=batches[0]["obs"].shape[1], final_capacity=final_capacity)
    for batch in batches:
        plain, once = _add(plain, batch), _add(once, batch)
    return plain, once


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# (T, E, C, adds): before the ring is full, full, wrapped many times; C a multiple of E or not; C == E.
STREAMS = [(2, 3, 12, 3), (2, 3, 12, 4), (2, 3, 12, 11), (1, 4, 10, 9), (3, 2, 2, 5), (2, 5, 20, 17)]


@pytest.mark.parametrize("num_tasks, envs_per_task, capacity, num_adds", STREAMS)
@pytest.mark.parametrize("end_rate", [0.0, 0.2, 0.6])
def test_observation_once_samples_exactly_the_stored_transitions(num_tasks, envs_per_task, capacity, num_adds,
                                                                 end_rate):
    """Bit for bit the batches of the layout that stores every field, for the same keys: plain samples and n-step
    windows, with episodes ending by termination, truncation and both, across the ring's wrap."""
    rng = np.random.default_rng(num_adds * 100 + envs_per_task)
    plain, once = _both_layouts(_stream(rng, num_tasks, envs_per_task, num_adds, end_rate), capacity)
    assert "next_obs" not in once.data and (np.asarray(once.finals.lost) == 0).all()
    for seed in range(3):
        key = jax.random.key(seed)
        _assert_same(*[_sample(state, key, batch_size=num_tasks * 40 + 1)[0] for state in (once, plain)])
        steps_per_env = min(num_adds, capacity // envs_per_task)
        for length in range(1, 4):
            if capacity % envs_per_task or length > steps_per_env or (length - 1) * envs_per_task >= capacity:
                continue
            got, want = [_sample_windows(state, key, batch_size=num_tasks * 40, length=length,
                                         stride=envs_per_task)[0] for state in (once, plain)]
            _assert_same(got, want)


def test_every_stored_transition_is_read_back_exactly():
    """Not by chance of the draw: every slot of a wrapped ring, read as `sample` reads it."""
    num_tasks, envs_per_task, capacity = 2, 3, 12
    plain, once = _both_layouts(_stream(np.random.default_rng(1), num_tasks, envs_per_task, 9, 0.3), capacity)
    task_id = np.repeat(np.arange(num_tasks), capacity)
    slots = np.tile(np.arange(capacity), num_tasks)
    _assert_same(replay._read(once, jnp.asarray(task_id), jnp.asarray(slots)),
                 jax.tree.map(lambda stored: stored[task_id, slots], plain.data))


def test_a_full_finals_ring_counts_what_it_loses_and_keeps_the_newest():
    """F = 3 finals per task for a stream that ends many episodes: the finals of the oldest ended items are
    overwritten while those items are still stored, and counted; the newest F ended items read back exactly."""
    num_tasks, envs_per_task, capacity, final_capacity = 1, 3, 12, 3
    batches = _stream(np.random.default_rng(2), num_tasks, envs_per_task, 6, 0.5)
    plain, once = _both_layouts(batches, capacity, final_capacity)
    ended = np.concatenate([b["terminal"][0] | b["truncated"][0] for b in batches])  # items 0..17, slot = item % 12
    live = np.flatnonzero(ended[-capacity:]) + len(ended) - capacity  # ended items still stored
    assert len(live) > final_capacity
    # Ended item number d takes final d % F and loses ended item d - F's, unless this add overwrote that item.
    ended_items = np.flatnonzero(ended)
    lost = sum(ended_items[d - final_capacity] >= (item // envs_per_task + 1) * envs_per_task - capacity
               for d, item in enumerate(ended_items) if d >= final_capacity)
    assert int(once.finals.lost[0]) == lost >= len(live) - final_capacity
    got = replay._read(once, jnp.zeros(capacity, jnp.int32), jnp.arange(capacity))
    want = plain.data
    for item in live[-final_capacity:]:
        np.testing.assert_array_equal(got["next_obs"][item % capacity], want["next_obs"][0, item % capacity])
    for name in ("obs", "action", "reward", "terminal", "truncated"):
        np.testing.assert_array_equal(got[name], want[name][0], err_msg=name)


def test_observation_once_nbytes_is_what_init_allocates_and_about_half():
    example = {"obs": jnp.zeros((3, 67), jnp.float32), "action": jnp.zeros((3, 21), jnp.float32),
               "reward": jnp.zeros((3,), jnp.float32), "next_obs": jnp.zeros((3, 67), jnp.float32),
               "terminal": jnp.zeros((3,), bool), "truncated": jnp.zeros((3,), bool)}
    state = replay.init(example, 1000, envs_per_task=8, final_capacity=16)
    assert replay.nbytes(example, 1000, 8, 16) == sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    per_item = replay.nbytes(example, 1000, 8, 16) / 3000
    assert 360 <= per_item < 368  # obs 268 + action 84 + reward 4 + end 4, and the finals
    assert replay.nbytes(example, 1000) == 3000 * 626 + 2 * 3 * 4  # every field stored, and the counters
    with pytest.raises(ValueError, match="final_capacity=4"):
        replay.init(example, 1000, envs_per_task=8, final_capacity=4)
