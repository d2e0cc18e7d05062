"""What a request's latency is made of, shared by the profile, its statistics and the estimator.

A request's latency is ``vision + prefill + (output_tokens - 1) * decode_ms_per_token``: the
vision tower at the tier, the prompt's forward pass (which yields the first token), then one
decode step per further token. This module imports no torch, so reading a profile table
(``python -m knobctl show``) stays fast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PARTS = ("vision_ms", "prefill_ms", "decode_ms_per_token")


def request_ms(vision: Any, prefill: Any, decode: Any, output_tokens: Any) -> Any:
    """Latency of a whole request from its parts (works on scalars and arrays alike)."""
    steps = np.maximum(np.asarray(output_tokens) - 1, 0)
    return np.asarray(vision) + np.asarray(prefill) + steps * np.nan_to_num(np.asarray(decode, dtype=float))
