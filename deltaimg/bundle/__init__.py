"""The bundle file: format, writer, reader, verification, signatures and trusted keys."""
