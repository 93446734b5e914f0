"""The demo run by `python -m actors demo` and `serve --demo`."""
