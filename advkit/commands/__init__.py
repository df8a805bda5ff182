"""Implementations behind CLI commands (kept out of cli.py so start-up stays light)."""
