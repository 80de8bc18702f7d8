"""The resolved config: checks before Ray starts, paths, what a resumed run may change."""
