"""The container engine boundary: the only package that talks to an engine's API."""
