"""Built-in evaluation tasks; each module is one pluggy plugin."""
