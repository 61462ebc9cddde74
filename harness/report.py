"""``python -m harness.report``: render tables from run records (``harness.results.report``)."""
from harness.results.report import main

if __name__ == "__main__":
    main()
