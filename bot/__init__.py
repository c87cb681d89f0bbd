"""The latent-painter application: command line, worker loop and Discord bot."""
