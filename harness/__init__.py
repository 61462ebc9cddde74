"""Reference benchmark harness for low-bit LLM weight quantization."""
from harness.errors import ConfigError
from harness.plugins.hookspecs import hookimpl

__all__ = ["ConfigError", "hookimpl"]
__version__ = "0.1.0"
