"""Cached rollouts: every (sample, configuration) answered once, the accuracy table on disk, online rollouts."""
