"""Analyses of modules that capture keeps as leaves (their insides are not in any graph)."""
