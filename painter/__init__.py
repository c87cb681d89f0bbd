"""Latent Painter: turn a diffusion model's x0-hat trail into a painting animation."""
