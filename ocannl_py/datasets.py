"""Small synthetic datasets for tutorials and demos."""

from __future__ import annotations

import numpy as np


def half_moons(n: int, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles: points (n, 2) float32 and labels (n, 1) in {-1, +1}."""
    if n < 2 or n % 2:
        raise ValueError(f"half_moons: n must be a positive even number, got {n}")
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, np.pi, n // 2)
    upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower = np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    points = np.concatenate([upper, lower]) + rng.normal(0, noise, (n, 2))
    labels = np.concatenate([np.ones(n // 2), -np.ones(n // 2)])[:, None]
    order = rng.permutation(n)
    return points[order].astype(np.float32), labels[order].astype(np.float32)
