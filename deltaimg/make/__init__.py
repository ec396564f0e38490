"""Make a bundle: compare a base and a target image and write what the target needs."""
