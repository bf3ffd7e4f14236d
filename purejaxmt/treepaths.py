"""Pytree leaves named by their path (`learner/critic_params/params/Dense_0/kernel`), for code that must find a leaf
by name rather than by position: checkpoints (saved keyed by path), transfer (re-indexing the task embedding) and an
agent's freeze (which leaves a frozen update may change)."""

from __future__ import annotations

from typing import Any

import jax


def key_name(key: Any) -> str:
    """One path entry as a string: a field name, dict key or sequence index."""
    for attribute in ("name", "key", "idx"):  # GetAttrKey, DictKey / FlattenedIndexKey, SequenceKey
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_names(path: tuple) -> tuple[str, ...]:
    """A `jax.tree_util` key path as a tuple of names."""
    return tuple(key_name(key) for key in path)


def leaf_paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf of `tree` with its path of names, in flattening order."""
    return [(path_names(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
