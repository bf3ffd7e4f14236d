"""What a checkpoint's digests cost: hash throughput on this CPU, then one run's checkpoint of a preset, its leaves
allocated with their real shapes and dtypes and random contents (zstd cannot shrink them, as it cannot shrink
trained weights and observations), saved by orbax to a local directory and hashed by `checkpoints.digests`.

    python experiments/bench_checkpoint.py --script mjx_humanoid_mt --preset fast
    python experiments/bench_checkpoint.py --preset paper --dir /tmp     # 3.8 GiB of RAM and of disk

The checkpoint holds the replay buffer when the preset saves it (`run.save_replay`), as a run would.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from purejaxmt import offpolicy, runner
from purejaxmt.runner import checkpoints, devices


def hash_throughputs(megabytes: int = 256) -> dict[str, float]:
    """GB/s of each candidate hash over one float32 array, one core."""
    data = np.random.default_rng(0).standard_normal(megabytes * 2**18).astype(np.float32).view(np.uint8)
    candidates = {"crc32 (zlib)": zlib.crc32, "sha1": lambda b: hashlib.sha1(b).digest(),
                  "sha256": lambda b: hashlib.sha256(b).digest(),
                  "blake2b": lambda b: hashlib.blake2b(b, digest_size=16).digest()}
    speeds = {}
    for name, function in candidates.items():
        start = time.perf_counter()
        function(data)
        speeds[name] = data.nbytes / (time.perf_counter() - start) / 1e9
    return speeds


def random_checkpoint(script: str, preset: str) -> dict:
    """One run's saveable state of `experiments/<script>.py --preset <preset>`, filled with random values."""
    spec = importlib.util.spec_from_file_location(script, Path(__file__).parent / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chosen = module.PRESETS[preset]
    program = offpolicy.make(module.AGENT, chosen.agent, chosen.loop, runner.make_env(chosen.run))
    state = devices.abstract_states(program, devices.seed_keys(0, 1))
    state = state if chosen.run.save_replay else state.replace(replay=None)
    leaves, treedef = jax.tree.flatten(checkpoints.to_saveable(state))

    def fill(index: int, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        key = jax.random.PRNGKey(index)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return jax.random.normal(key, leaf.shape, jnp.float32).astype(leaf.dtype)
        return jax.random.bits(key, leaf.shape, jnp.uint32).astype(leaf.dtype)

    return jax.tree.unflatten(treedef, [fill(i, leaf) for i, leaf in enumerate(leaves)])


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", default="mjx_humanoid_mt", choices=["mjx_humanoid_mt", "minatar_mt"])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--dir", default=None, help="where the checkpoint is written (a temporary directory in it)")
    return parser


def main() -> None:
    args = make_parser().parse_args()
    for name, speed in hash_throughputs().items():
        print(f"{name}: {speed:.2f} GB/s on one core")
    tree = random_checkpoint(args.script, args.preset)
    size = sum(leaf.nbytes for leaf in jax.tree.leaves(tree))
    directory = tempfile.mkdtemp(dir=args.dir)
    try:
        manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=False))
        start = time.perf_counter()
        manager.save(1, args=ocp.args.StandardSave(tree))
        save = time.perf_counter() - start
        manager.close()
        on_disk = sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            checkpoints.digests(tree)
            timings.append(time.perf_counter() - start)
        digest = min(timings)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{args.script} --preset {args.preset}: {size / 2**30:.2f} GiB per run ({on_disk / 2**30:.2f} GiB on "
          f"disk), orbax save {save:.1f} s, digests {digest:.2f} s ({size / digest / 1e9:.2f} GB/s), "
          f"{digest / save:.0%} of the save")


if __name__ == "__main__":
    main()
