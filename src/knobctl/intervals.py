"""Paired bootstrap intervals: is a difference between two methods on the same samples beyond noise?

Every headline difference (the controller against static or lookup, the probe against the controller) is a
mean of per-sample differences, paired because both methods answered the same samples. Its 95% interval
resamples the samples with replacement (:data:`BOOTSTRAP` times, seeded, so a rerun gives the same interval)
and takes the 2.5% and 97.5% quantiles of the resampled means. Numpy only, so the report stage stays light.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP = 2000  # resamples of a paired interval
#: A method counts as "not below" another when the paired 95% interval of its gain reaches above this (points / 100).
NOT_BELOW = -0.005


def paired_interval(diff: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval (rounded to 4 places) of the mean of per-sample differences ``diff`` [E]."""
    diff = np.asarray(diff, dtype=np.float64)
    pick = np.random.default_rng(seed).integers(0, len(diff), size=(BOOTSTRAP, len(diff)))  # [R, E]
    lo, hi = np.quantile(diff[pick].mean(axis=1), [0.025, 0.975])
    return round(float(lo), 4), round(float(hi), 4)
