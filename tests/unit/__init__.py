# A package, so that its conftest is `unit.conftest`: a second top-level `conftest` module
# would replace tests/conftest.py's, which the root tests' helpers import by that name.
