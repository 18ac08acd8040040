"""Test support: real services started in-process for tests (an HTTP strategy registry) and waiting helpers."""
