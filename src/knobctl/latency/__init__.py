"""Latency: profiling over the knob grid, profile statistics, the LightGBM estimator and its evaluation."""
