"""Reading container images from the places users keep them.

One small model (:class:`Image`, :class:`Layer`) and one sibling module per transport, in the
spirit of go-containerregistry's ``pkg/v1``: ``archive`` (``docker-archive:`` and
``oci-archive:``), ``layout`` (``oci:``) and ``daemon`` (``docker-daemon:``).
"""

from deltaimg.images.model import Image, Layer
from deltaimg.images.open import open_image

__all__ = ["Image", "Layer", "open_image"]
