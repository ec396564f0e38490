"""What changed between a base and a target image: files, config, packages."""
