"""Built-in observers (pluggy plugins): the record writer, the rich console and W&B."""
