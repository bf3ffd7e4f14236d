"""Tests of purejaxmt.categorical against an independent float64 NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purejaxmt import categorical

# One compiled function per input shape: hypothesis draws shapes from small sets, so the cache stays small.
_project = jax.jit(categorical.project)
_expectation = jax.jit(categorical.expectation)


# Supports the projection must handle exactly, `make_support`'s and one whose float32 rounding makes its gaps unequal.
SUPPORTS = {
    "K2": categorical.make_support(2, -10.0, 10.0),
    "K5": categorical.make_support(5, -1.0, 1.0),
    "K101": categorical.make_support(101, -10.0, 10.0),
    "K51-shifted": categorical.make_support(51, -3.3, 17.1),
    "K101-wide": categorical.make_support(101, -97.3, 41.9),
    "jnp-linspace": jnp.linspace(-10.0, 10.0, 101, dtype=jnp.float32),
}


def reference_project(atoms: np.ndarray, probs: np.ndarray, support: np.ndarray) -> np.ndarray:
    """C51 projection written as a plain loop over atoms, in float64.

    Each position is clipped to the support's range, its bracketing support points s_j <= x <= s_{j+1} are found, and
    its mass is split in proportion to distance; a position on s_j (or on the last point) goes entirely to it.
    """
    atoms = np.asarray(atoms, np.float64)
    probs = np.asarray(probs, np.float64)
    support = np.asarray(support, np.float64)
    num_bins = support.shape[0]
    batch_shape = atoms.shape[:-1]
    flat_atoms = atoms.reshape(-1, atoms.shape[-1])
    flat_probs = probs.reshape(-1, probs.shape[-1])
    out = np.zeros((flat_atoms.shape[0], num_bins), np.float64)
    for row in range(flat_atoms.shape[0]):
        for x, p in zip(flat_atoms[row], flat_probs[row]):
            x = min(max(x, support[0]), support[-1])
            j = int(np.searchsorted(support, x, side="right")) - 1  # largest j with s_j <= x
            if j >= num_bins - 1:
                out[row, num_bins - 1] += p
                continue
            upper_share = (x - support[j]) / (support[j + 1] - support[j])
            out[row, j] += p * (1.0 - upper_share)
            out[row, j + 1] += p * upper_share
    return out.reshape(*batch_shape, num_bins)


def random_case(seed: int, num_bins: int, v_min: float, width: float, batch_shape: tuple[int, ...]):
    """A support, and atoms inside it, outside it and exactly on its points, with random (sometimes zero) masses."""
    rng = np.random.default_rng(seed)
    support = np.asarray(categorical.make_support(num_bins, v_min, v_min + width))
    shape = (*batch_shape, num_bins)
    inside = rng.uniform(support[0], support[-1], shape)
    outside = np.where(
        rng.random(shape) < 0.5,
        support[0] - rng.uniform(0.0, 2.0 * width, shape),
        support[-1] + rng.uniform(0.0, 2.0 * width, shape),
    )
    on_point = support[rng.integers(0, num_bins, shape)]
    kind = rng.integers(0, 3, shape)
    atoms = np.select([kind == 0, kind == 1], [inside, outside], on_point).astype(np.float32)
    probs = rng.dirichlet(np.ones(num_bins), batch_shape).astype(np.float32)
    probs = np.where(rng.random(shape) < 0.2, 0.0, probs).astype(np.float32)  # some empty atoms
    probs = (probs / np.maximum(probs.sum(-1, keepdims=True), 1e-6)).astype(np.float32)
    return support, atoms, probs


case_strategy = dict(
    seed=st.integers(0, 2**31 - 1),
    num_bins=st.sampled_from([2, 3, 7, 51, 101]),
    v_min=st.floats(-100.0, 50.0),
    width=st.floats(0.5, 100.0),
    batch_shape=st.sampled_from([(), (3,), (2, 4)]),
)


@settings(max_examples=25, deadline=None)
@given(**case_strategy)
def test_project_matches_reference(seed, num_bins, v_min, width, batch_shape):
    support, atoms, probs = random_case(seed, num_bins, v_min, width, batch_shape)
    projected = np.asarray(_project(atoms, probs, support))
    expected = reference_project(atoms, probs, support)
    assert projected.shape == (*batch_shape, num_bins)
    assert projected.dtype == np.float32
    np.testing.assert_allclose(projected, expected, atol=2e-6, rtol=0)
    # Mass is conserved, also for rows that do not sum to 1.
    np.testing.assert_allclose(projected.sum(-1), probs.astype(np.float64).sum(-1), atol=2e-6, rtol=0)
    assert (projected >= 0).all()


@settings(max_examples=25, deadline=None)
@given(**case_strategy)
def test_project_keeps_the_mean_when_nothing_is_clipped(seed, num_bins, v_min, width, batch_shape):
    support, _, probs = random_case(seed, num_bins, v_min, width, batch_shape)
    rng = np.random.default_rng(seed + 1)
    atoms = rng.uniform(support[0], support[-1], probs.shape).astype(np.float32)
    projected = _project(atoms, probs, support)
    mean_before = (atoms.astype(np.float64) * probs).sum(-1)
    mean_after = np.asarray(_expectation(projected, support))
    scale = max(abs(support[0]), abs(support[-1]))
    np.testing.assert_allclose(mean_after, mean_before, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("support", list(SUPPORTS.values()), ids=list(SUPPORTS))
def test_atoms_on_support_points_keep_all_their_mass_exactly(support):
    # The classic floor == ceil bug drops exactly these masses; here every row must come back bit-for-bit.
    num_bins = support.shape[0]
    rng = np.random.default_rng(num_bins)
    probs = rng.dirichlet(np.ones(num_bins), 4).astype(np.float32)
    permutation = np.stack([rng.permutation(num_bins) for _ in range(4)])
    atoms = np.asarray(support)[permutation]  # [4, K]: every support point once, shuffled
    projected = np.asarray(_project(atoms, probs, support))
    expected = np.zeros_like(probs)
    np.put_along_axis(expected, permutation, probs, axis=-1)
    np.testing.assert_array_equal(projected, expected)

    # One-hot masses on the support points come back as the identity matrix.
    identity = np.eye(num_bins, dtype=np.float32)
    atoms = jnp.broadcast_to(support, identity.shape)
    np.testing.assert_array_equal(np.asarray(_project(atoms, identity, support)), identity)


@pytest.mark.parametrize("batch_shape", [(1,), (4,), (2, 3)], ids=["vmap1", "vmap4", "vmap2x3"])
def test_vmap_equals_row_by_row(batch_shape):
    # The runner vmaps the update over seeds; the projection must not change under a leading vmapped axis.
    support, atoms, probs = random_case(7, 101, -10.0, 20.0, (*batch_shape, 16))
    batched = categorical.project
    for _ in batch_shape:
        batched = jax.vmap(batched, in_axes=(0, 0, None))
    vmapped = np.asarray(jax.jit(batched)(atoms, probs, support))
    assert vmapped.shape == (*batch_shape, 16, 101)
    for index in np.ndindex(*batch_shape):
        row = np.asarray(_project(atoms[index], probs[index], support))
        np.testing.assert_allclose(vmapped[index], row, atol=1e-7, rtol=0)
    np.testing.assert_allclose(vmapped, reference_project(atoms, probs, support), atol=2e-6, rtol=0)


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 5)])
def test_project_more_or_fewer_positions_than_atoms(batch_shape):
    # N = 7 positions onto K = 11 atoms (and 23 onto 11): the output has the support's length.
    support = np.asarray(categorical.make_support(11, -5.0, 5.0))
    rng = np.random.default_rng(3)
    for num_positions in (7, 23):
        shape = (*batch_shape, num_positions)
        atoms = np.where(rng.random(shape) < 0.3, support[rng.integers(0, 11, shape)], rng.uniform(-8.0, 8.0, shape))
        atoms = atoms.astype(np.float32)
        probs = rng.dirichlet(np.ones(num_positions), batch_shape).astype(np.float32)
        projected = np.asarray(_project(atoms, probs, support))
        assert projected.shape == (*batch_shape, 11) and projected.dtype == np.float32
        np.testing.assert_allclose(projected, reference_project(atoms, probs, support), atol=2e-6, rtol=0)


@pytest.mark.parametrize("support", list(SUPPORTS.values()), ids=list(SUPPORTS))
def test_each_atom_alone_keeps_its_exact_mass(support):
    # One position per row, on the first, the last or an interior atom, with an arbitrary (non-dyadic) mass: the
    # mass must land on that atom bit-for-bit and nothing anywhere else, whatever bin the float guess lands in.
    num_bins = support.shape[0]
    masses = np.random.default_rng(11).uniform(0.01, 3.0, num_bins).astype(np.float32)
    atoms = np.asarray(support)[:, None]  # [K, 1]: row j holds only s_j
    projected = np.asarray(_project(atoms, masses[:, None], support))
    np.testing.assert_array_equal(projected, np.diag(masses))
    # The same through vmap (the runner's path).
    vmapped = np.asarray(jax.jit(jax.vmap(categorical.project, in_axes=(0, 0, None)))(atoms, masses[:, None], support))
    np.testing.assert_array_equal(vmapped, np.diag(masses))


@pytest.mark.parametrize(
    "support",
    [categorical.make_support(101, -10.0, 10.0), categorical.make_support(101, -97.3, 41.9),
     # One float step above its next-to-last atom, XLA:CPU's float32 guess lands in bracket K-3, one below: the step
     # up there must be taken (found by a search over supports; the two above have no such position there).
     categorical.make_support(101, -62.31065368652344, 78.3953628540039)],
    ids=["K101", "K101-shifted", "K101-guess-low-at-the-top"],
)
def test_positions_a_few_float_steps_off_each_atom(support):
    # Where the float guess (x - s_0) / dz of the bracket lands one bin off: within a few float32 steps of an atom (a
    # few hundred such positions here, both ways). The bracket must come from the exact comparisons, else the small
    # share of the neighbouring atom goes to the wrong one. One position per row with mass 1, so each error shows.
    points = np.asarray(support)
    below, above, offsets = points.copy(), points.copy(), [points]
    for _ in range(8):
        below, above = np.nextafter(below, -np.inf), np.nextafter(above, np.inf)
        offsets += [below, above]
    atoms = np.concatenate(offsets).astype(np.float32)[:, None]  # [17 K, 1]
    probs = np.ones_like(atoms)
    projected = np.asarray(_project(atoms, probs, support))
    np.testing.assert_allclose(projected, reference_project(atoms, probs, support), atol=3e-7, rtol=0)


def test_clipped_mass_goes_to_the_end_atoms():
    support = categorical.make_support(5, -2.0, 2.0)
    atoms = jnp.array([-100.0, -2.0, 2.0, 7.0, jnp.inf])
    probs = jnp.array([0.1, 0.2, 0.3, 0.15, 0.25])
    projected = np.asarray(_project(atoms, probs, support))
    np.testing.assert_array_equal(projected[1:4], 0.0)
    np.testing.assert_allclose(projected[[0, 4]], [0.3, 0.7], rtol=1e-6)


def test_project_hand_example():
    # support [-1, 0, 1]; mass 1 at 0.5 -> half on 0 and half on 1; mass at -0.75 -> 3/4 on -1, 1/4 on 0.
    support = categorical.make_support(3, -1.0, 1.0)
    atoms = jnp.array([[0.5, 0.5, 0.5], [-0.75, -0.75, -0.75]])
    probs = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(_project(atoms, probs, support)), [[0.0, 0.5, 0.5], [0.75, 0.25, 0.0]])


def test_project_rejects_bad_shapes_naming_them():
    support = categorical.make_support(5)
    with pytest.raises(AssertionError):
        categorical.project(jnp.zeros((2, 5)), jnp.zeros((3, 5)), support)
    with pytest.raises(AssertionError):
        categorical.project(jnp.zeros((2, 5)), jnp.zeros((2, 5)), support[None])
    with pytest.raises(ValueError, match=r"the support needs at least 2 atoms, got shape \(1,\)"):
        categorical.project(jnp.zeros((2, 5)), jnp.zeros((2, 5)), support[:1])


def test_make_support():
    support = categorical.make_support()
    assert support.shape == (101,) and support.dtype == jnp.float32
    # Each atom is the float32 nearest to the exact grid point: endpoints and 0 exact, symmetric.
    np.testing.assert_array_equal(np.asarray(support), np.linspace(-10.0, 10.0, 101).astype(np.float32))
    assert support[0] == -10.0 and support[-1] == 10.0 and support[50] == 0.0
    np.testing.assert_array_equal(np.asarray(support), -np.asarray(support)[::-1])
    with pytest.raises(ValueError, match="num_bins"):
        categorical.make_support(1)
    with pytest.raises(ValueError, match="v_min < v_max"):
        categorical.make_support(11, 1.0, 1.0)


def numpy_cross_entropy(logits: np.ndarray, target_probs: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    log_normaliser = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return -(target_probs * (logits - log_normaliser[..., None])).sum(-1)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_bins=st.sampled_from([2, 11, 101]),
    logit_scale=st.sampled_from([0.1, 3.0, 300.0]),
)
def test_cross_entropy_and_its_gradient(seed, num_bins, logit_scale):
    rng = np.random.default_rng(seed)
    logits = (logit_scale * rng.standard_normal((3, 4, num_bins))).astype(np.float32)
    target_probs = rng.dirichlet(np.ones(num_bins) * 0.3, (3, 4)).astype(np.float32)

    loss = categorical.cross_entropy(logits, target_probs)
    assert loss.shape == (3, 4) and loss.dtype == jnp.float32
    expected = numpy_cross_entropy(logits, target_probs.astype(np.float64))
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-5, atol=1e-4 * logit_scale)

    grad = jax.grad(lambda x: categorical.cross_entropy(x, target_probs).sum())(jnp.asarray(logits))
    assert np.isfinite(np.asarray(grad)).all()
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax = softmax / softmax.sum(-1, keepdims=True)
    # d/dlogits of -sum(t log softmax) = softmax * sum(t) - t = softmax - t for a normalised target.
    np.testing.assert_allclose(np.asarray(grad), softmax - target_probs, atol=1e-5)


def test_expectation():
    support = categorical.make_support(5, -2.0, 2.0)
    probs = jnp.array([[0.0, 0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.5], [0.0, 0.25, 0.0, 0.0, 0.75]])
    np.testing.assert_allclose(np.asarray(categorical.expectation(probs, support)), [0.0, 0.0, 1.25], atol=1e-7)
