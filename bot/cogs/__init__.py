"""The bot's cogs, one per feature (paint, transition, history, gallery, admin); ``common`` is shared."""
