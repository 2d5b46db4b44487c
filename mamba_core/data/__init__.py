"""Data files shipped with mamba_core (see README.md here)."""
