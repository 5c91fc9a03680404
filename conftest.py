"""Root pytest configuration: modules that must not be imported by doctest collection."""

collect_ignore = ["src/astrobatch/__main__.py"]
