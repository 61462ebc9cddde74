"""``python -m harness.compare A B``: paired comparison of two runs (``harness.results.compare``)."""
from harness.results.compare import main

if __name__ == "__main__":
    main()
