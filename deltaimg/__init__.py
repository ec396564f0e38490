"""deltaimg: signed binary-delta bundles for container images on air-gapped hosts."""

__version__ = "0.1.0"
