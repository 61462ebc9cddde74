"""Built-in observers (pluggy plugins): the rich console and W&B. They only read; the run writes its record."""
