"""Helpers shared by test suites that drive real processes (see ``processes``)."""
