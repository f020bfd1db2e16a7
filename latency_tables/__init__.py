"""Shipped, measured latency lookup tables (JSON). See README.md in this folder for how each was made."""
