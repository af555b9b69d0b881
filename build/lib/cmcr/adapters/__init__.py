"""The only modules that touch private attributes of our dependencies.

Each module here wraps one thing a dependency does not offer publicly, says why the public API
is not enough, and has a test (tests/test_adapters_*.py) that pins the behaviour we rely on, so a
dependency upgrade that changes it fails there first, not in a sweep.
"""
