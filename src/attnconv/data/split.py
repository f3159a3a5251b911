"""Hold a validation set out of the training split.

The validation split picks the best checkpoint and tunes choices; the test split is read
only for the final numbers (the authors' code selected its checkpoint on the test set).
"""

from __future__ import annotations

import numpy as np

from attnconv.errors import ConfigError


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder)."""
    exact = counts * (total / counts.sum())
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: total - int(take.sum())]] += 1
    return take


def train_val_split(
    n: int, val_fraction: float = 0.1, seed: int = 0, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, disjoint train/validation index arrays covering ``range(n)``.

    Args:
        n: number of training examples.
        val_fraction: share held out for validation, in ``[0, 1)``; the validation set has
            ``round(n * val_fraction)`` examples.
        seed: seed of the ``numpy.random.default_rng`` that draws the split.
        labels: optional ``(n,)`` class labels; when given the split is stratified (each
            class contributes in proportion to its size, remainders to the largest
            fractional parts).

    Returns:
        ``(train_indices, val_indices)``, each sorted int64.

    Raises:
        ConfigError: ``val_fraction`` outside ``[0, 1)``, ``n`` negative or labels of the
            wrong length.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    n_val = round(n * val_fraction)
    if labels is not None and np.shape(labels) != (n,):
        raise ConfigError(f"labels must have shape ({n},), got {np.shape(labels)}")
    if labels is None or n_val == 0:
        val = rng.permutation(n)[:n_val]
    else:
        _, inverse = np.unique(labels, return_inverse=True)
        take = _allocate(np.bincount(inverse), n_val)
        val = np.concatenate([
            rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(take)
        ])
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
