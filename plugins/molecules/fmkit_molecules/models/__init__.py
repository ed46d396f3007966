"""Velocity models for molecules: an e3nn tensor-product network (default) and EGNN (fast baseline)."""
