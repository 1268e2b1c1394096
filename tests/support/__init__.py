"""Helpers that start real services for the tests (registries, servers)."""
