"""Command-line entry points (the top-level scripts are thin wrappers over these)."""
