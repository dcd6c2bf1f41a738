"""Rollout engines: generate n samples per prompt with token log-probs; take new weights."""
