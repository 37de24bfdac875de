"""slurmjwt: short-lived Slurm JWTs for the users logged in to this node."""

__version__ = "0.1.0"
