"""Cluster layer: sweep specs, submitit jobs (SLURM or local), schedule-fork branches, run status."""
