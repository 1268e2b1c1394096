"""Inference engines behind one small protocol (``backends.base``)."""
