"""Shared basics every layer above ``objectives`` may use: checkpoint format, errors, storage, run files."""
