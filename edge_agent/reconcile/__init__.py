"""Enforcement: bring the cluster to the policy in force (plan, targets, inventory, drift, health)."""
