"""Validation on the real model with real clocks, its plots and reports/summary.md."""
