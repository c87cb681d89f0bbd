"""Persistence for Latent Painter: SQLAlchemy models, the job queue, results and the gallery.

A library: plain ids and values in, typed rows out. It never imports ``bot`` or ``painter``.
"""
