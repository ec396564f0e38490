"""Layer deltas: the encoder, the decoder, the recipe format, and the base image's content index."""
