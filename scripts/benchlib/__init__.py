"""Helpers of scripts/bench: deltaimg against the ways images are shipped today."""
