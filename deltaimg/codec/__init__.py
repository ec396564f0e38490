"""Byte-level codecs: zstd with a reference prefix, bsdiff's streams, varints."""
