"""Built-in quantization methods; each module is one pluggy plugin."""
