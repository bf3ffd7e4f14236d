"""A multi-process job's processes: joining it, and noticing when one of them is lost.

`initialize_distributed(argv)` joins the job a command line (or the environment) names, before anything starts
JAX's backend, and starts `watch_peers`: without it, a SIGKILLed peer leaves the others blocked in a collective until
JAX's coordination service aborts them with a C++ check failure (72 s, exit code 134). With it, they stop with one
line naming the lost process and how to continue the job, and exit status `LOST_PEER_EXIT`.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
from jax._src import distributed  # the job's coordination client (no public handle in jax 0.10)


def initialize_distributed(argv: list[str]) -> bool:
    """Joins a multi-process job (JAX's own multi-controller runtime, `jax.distributed.initialize`) when the command
    line or the environment names one: `--coordinator-address host:port --num-processes N --process-id i`, or the
    variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. On a TPU pod slice or under SLURM,
    `--num-processes auto` lets JAX detect everything. Returns whether a job was joined."""
    address = peek_flag(argv, "--coordinator-address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = peek_flag(argv, "--num-processes") or os.environ.get("JAX_NUM_PROCESSES")
    index = peek_flag(argv, "--process-id") or os.environ.get("JAX_PROCESS_ID")
    if address is None and count is None and index is None:
        return False
    if count == "auto":
        jax.distributed.initialize()
    else:
        if address is None or count is None or index is None:
            raise SystemExit("a multi-process job needs all of --coordinator-address, --num-processes and "
                             f"--process-id (got {address!r}, {count!r}, {index!r}), or --num-processes auto on a "
                             "TPU pod or SLURM")
        jax.distributed.initialize(address, num_processes=int(count), process_id=int(index))
    print(f"[purejaxmt] process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
          f"of {jax.device_count()} devices", flush=True)
    watch_peers(argv)
    return True


# How long a peer may stay silent before this process declares it lost (`PUREJAXMT_PEER_TIMEOUT`, seconds).
PEER_TIMEOUT = 30.0
LOST_PEER_EXIT = 75  # EX_TEMPFAIL: the job can be continued


def watch_peers(argv: list[str], timeout: float | None = None, interval: float = 1.0) -> threading.Thread:
    """A daemon thread that keeps this process's heartbeat in the job's key-value store and stops this process with
    one line when another process is lost (silent for `timeout` s, or, for process 0's peers, the coordinator
    unreachable). A process that ends normally says so first (`atexit`), so the others do not mistake its exit for a
    loss. A collective cut by a lost peer raises at once
    (gloo: "connection reset by peer"): an uncaught exception first waits until every peer has beaten again (it was
    not a loss; the traceback follows) or the lost peer is named, so the exception does not lead into JAX's shutdown
    barrier and its abort."""
    timeout = float(os.environ.get("PUREJAXMT_PEER_TIMEOUT", timeout or PEER_TIMEOUT))
    client = distributed.global_state.client
    me, count = jax.process_index(), jax.process_count()
    resume = peek_flag(argv, "--resume") or peek_flag(argv, "--run-dir") or "<its run or study dir>"
    exiting = threading.Event()

    def beat_of(peer: int) -> str | None:
        try:
            return _try_get(client, f"purejaxmt/alive/{peer}")
        except Exception:  # noqa: BLE001 - the coordination service itself is gone
            return None

    def ended(peer: int) -> bool:
        if peer not in done:
            try:
                if _try_get(client, f"purejaxmt/done/{peer}") is not None:
                    done.add(peer)
            except Exception:  # noqa: BLE001 - the coordination service itself is gone
                pass
        return peer in done

    def await_peers() -> None:
        """Waits until every peer has ended or beaten again; one silent for longer than `timeout` was lost, and this
        process stops saying so (before JAX's shutdown barrier, which would abort with a C++ trace)."""
        beats_then = {peer: beat_of(peer) for peer in heard}
        waiting_since = time.monotonic()
        while time.monotonic() - waiting_since < timeout + 5 * interval:
            if all(ended(peer) or beat_of(peer) != beats_then[peer] for peer in heard):
                return
            time.sleep(interval / 5)
        silent = [peer for peer in heard if not ended(peer) and beat_of(peer) == beats_then[peer]]
        if silent:
            stop(f"process {silent[0]} was lost (no heartbeat for {timeout:.0f} s)")

    def at_exit() -> None:  # registered after JAX's own shutdown hook, so it runs before it
        _quietly(lambda: client.key_value_set(f"purejaxmt/done/{me}", "1", True))
        await_peers()
        exiting.set()  # from here on a silent peer or a closed service is the job ending, not a loss

    atexit.register(at_exit)

    def stop(lost: str) -> None:
        if exiting.is_set():
            return
        print(f"[purejaxmt] process {me} of {count}: {lost}; stopping. Continue the job with --resume {resume} (and "
              "the same --coordinator-address, --num-processes, --process-id) on every process", file=sys.stderr,
              flush=True)
        os._exit(LOST_PEER_EXIT)

    heard = {peer: (None, time.monotonic()) for peer in range(count) if peer != me}  # last beat seen, and when
    done: set[int] = set()

    def watch() -> None:
        beats = 0
        while not exiting.is_set():
            try:
                beats += 1
                client.key_value_set(f"purejaxmt/alive/{me}", str(beats), True)
                for peer, (last, when) in list(heard.items()):
                    if ended(peer):
                        continue
                    value = _try_get(client, f"purejaxmt/alive/{peer}")
                    if value != last:
                        heard[peer] = (value, time.monotonic())
                    elif time.monotonic() - when > timeout:
                        stop(f"process {peer} was lost (no heartbeat for {timeout:.0f} s)")
            except Exception as error:  # noqa: BLE001 - the coordination service itself is gone
                if me != 0:
                    stop(f"process 0 (the job's coordinator) was lost ({type(error).__name__})")
                return
            time.sleep(interval)

    previous_hook = sys.excepthook

    def on_uncaught(kind: type, value: BaseException, trace: Any) -> None:
        await_peers()  # a collective cut by a lost peer raises at once: name the loss, not the traceback
        previous_hook(kind, value, trace)

    sys.excepthook = on_uncaught
    thread = threading.Thread(target=watch, name="purejaxmt-peer-watch", daemon=True)
    thread.start()
    return thread


def _try_get(client: Any, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as error:  # noqa: BLE001 - a missing key raises NOT_FOUND; anything else is a lost service
        if "NOT_FOUND" in str(error) or "not found" in str(error).lower():
            return None
        raise


def _quietly(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - at exit, a gone service is no news
        pass


def peek_flag(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
