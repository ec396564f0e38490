"""Apply a bundle: rebuild the target, load it into an engine, swap containers, unattended runs."""
