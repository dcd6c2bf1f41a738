"""Rank-side workers and their builders: actor, reference and critic roles (roles.py), the
builders every consumer shares (builders.py: trainer ranks, Ray ranks, engine actors, the
parity replay), and split-invariant metric sums (metric_sums.py)."""
