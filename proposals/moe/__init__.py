"""Mixture of Experts as a function op (see README.md)."""
