"""Layer tars: split into raw segments and file entries, reassembled byte for byte; the docker-archive writer."""
