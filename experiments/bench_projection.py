"""Times the jitted C51 projection plainly and under `jax.vmap` over leading rows (the runner vmaps over seeds).

    python experiments/bench_projection.py --rows 256 1024 --vmap-sizes 1 4 --repeats 30

Prints a markdown table: milliseconds per call (median of `--repeats` calls after warm-up, each timed to
`block_until_ready`) for `categorical.project` (O(N) per row: bracket index + one segment sum), the old `[N, K]` "hat"
form it replaced (`hat_project`, copied here so the comparison stays reproducible), and, with `--alternatives`, the
other accumulations that were considered on the same bracket code: two `.at[].add` scatters and a one-hot einsum at
`Precision.HIGHEST`. The last column is the largest difference from `hat_project`, as a sanity check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from purejaxmt import categorical

Projection = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def hat_project(atoms: jax.Array, probs: jax.Array, support: jax.Array) -> jax.Array:
    """The projection before the O(N) rewrite, verbatim: `[..., N, K]` hat weights summed over the middle axis."""
    num_bins = support.shape[0]
    if num_bins < 2:
        raise ValueError(f"project: the support needs at least 2 atoms, got shape {support.shape}")
    support = support.astype(jnp.float32)
    atoms = jnp.clip(atoms.astype(jnp.float32), support[0], support[-1])
    probs = probs.astype(jnp.float32)
    gaps = jnp.diff(support)  # [K-1]
    left_gap = jnp.concatenate([gaps[:1], gaps])  # [K]
    right_gap = jnp.concatenate([gaps, gaps[-1:]])  # [K]
    offset = atoms[..., :, None] - support  # [..., N, K]: x_i - s_j
    hat = jnp.where(offset >= 0, (right_gap - offset) / right_gap, (left_gap + offset) / left_gap)
    weights = jnp.where(offset == 0, 1.0, jnp.clip(hat, 0.0, 1.0))  # [..., N, K]
    return jnp.sum(probs[..., :, None] * weights, axis=-2)


def scatter_project(atoms: jax.Array, probs: jax.Array, support: jax.Array) -> jax.Array:
    """Alternative accumulation: two `.at[row, index].add` scatters into `[R, K]` (lower masses, then upper)."""
    num_bins = support.shape[0]
    lower_index, lower_mass, upper_mass = categorical._bracket(atoms, probs, support)
    batch_shape, num_positions = atoms.shape[:-1], atoms.shape[-1]
    num_rows = int(np.prod(batch_shape))
    rows = jnp.arange(num_rows)[:, None]
    index = lower_index.reshape(num_rows, num_positions)
    out = jnp.zeros((num_rows, num_bins), jnp.float32)
    out = out.at[rows, index].add(lower_mass.reshape(num_rows, num_positions), mode="promise_in_bounds")
    out = out.at[rows, index + 1].add(upper_mass.reshape(num_rows, num_positions), mode="promise_in_bounds")
    return out.reshape(*batch_shape, num_bins)


def one_hot_project(atoms: jax.Array, probs: jax.Array, support: jax.Array) -> jax.Array:
    """Alternative accumulation: one-hot `[..., N, K]` matrices contracted at HIGHEST precision (no TF32 on GPUs)."""
    num_bins = support.shape[0]
    lower_index, lower_mass, upper_mass = categorical._bracket(atoms, probs, support)
    highest = jax.lax.Precision.HIGHEST
    lower = jnp.einsum("...n,...nk->...k", lower_mass, jax.nn.one_hot(lower_index, num_bins), precision=highest)
    upper = jnp.einsum("...n,...nk->...k", upper_mass, jax.nn.one_hot(lower_index + 1, num_bins), precision=highest)
    return lower + upper


def median_ms(fn: Callable[..., jax.Array], args: tuple[jax.Array, ...], warmup: int, repeats: int) -> float:
    """Median wall time of one call in ms; the warm-up calls absorb compilation and first-touch costs."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def make_inputs(rng: np.random.Generator, shape: tuple[int, ...], support: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """TD-target-like positions (a third inside, a third clipped, a third on atoms) and softmax masses."""
    width = support[-1] - support[0]
    inside = rng.uniform(support[0], support[-1], shape)
    outside = rng.uniform(support[0] - width, support[-1] + width, shape)
    on_atom = support[rng.integers(0, support.shape[0], shape)]
    kind = rng.integers(0, 3, shape)
    atoms = np.select([kind == 0, kind == 1], [inside, outside], on_atom).astype(np.float32)
    logits = rng.standard_normal(shape)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return jnp.asarray(atoms), jnp.asarray(probs, jnp.float32)


def make_parser() -> argparse.ArgumentParser:
    """The command line, apart from `main` so that tests/test_docs.py can parse the documented commands."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[256, 1024], help="batch rows R: atoms are [R, K]")
    parser.add_argument("--num-bins", type=int, default=101, help="K (also N, the positions per row)")
    parser.add_argument("--vmap-sizes", type=int, nargs="+", default=[1, 4], help="leading vmapped axis sizes")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per cell (median reported; >= 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--alternatives", action="store_true", help="also time the scatter and one-hot variants")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main() -> None:
    parser = make_parser()
    args = parser.parse_args()
    if args.repeats < 20:
        parser.error("--repeats must be >= 20")

    device = jax.devices()[0]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} "
          f"(x{jax.device_count()}), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(f"ms per call, median of {args.repeats} after {args.warmup} warm-up calls; K = N = {args.num_bins}\n")

    impls: dict[str, Projection] = {"project (segment_sum)": categorical.project}
    if args.alternatives:
        impls |= {"two .at[].add scatters": scatter_project, "one-hot einsum HIGHEST": one_hot_project}
    impls["hat_project (old)"] = hat_project

    vmap_cols = [f"vmap {v} (per call / per row)" for v in args.vmap_sizes]
    header = ["implementation", "atoms shape", "plain", *vmap_cols, "max abs diff vs hat"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    support = categorical.make_support(args.num_bins)
    rng = np.random.default_rng(args.seed)
    for rows in args.rows:
        largest = max(args.vmap_sizes)
        atoms, probs = make_inputs(rng, (largest, rows, args.num_bins), np.asarray(support))
        batched_in = (0, 0, None)
        reference = jax.jit(jax.vmap(hat_project, in_axes=batched_in))(atoms, probs, support)
        for name, fn in impls.items():
            plain = jax.jit(fn)
            vmapped = jax.jit(jax.vmap(fn, in_axes=batched_in))
            cells = [f"{median_ms(plain, (atoms[0], probs[0], support), args.warmup, args.repeats):.2f}"]
            for size in args.vmap_sizes:
                ms = median_ms(vmapped, (atoms[:size], probs[:size], support), args.warmup, args.repeats)
                cells.append(f"{ms:.2f} / {ms / size:.2f}")
            diff = float(jnp.abs(vmapped(atoms, probs, support) - reference).max())
            print(f"| {name} | [{rows}, {args.num_bins}] | " + " | ".join(cells) + f" | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
