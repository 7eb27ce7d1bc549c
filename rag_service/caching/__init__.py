"""Reusing work already done: the prompt-exact answer cache and its single-flight of generations."""
