"""``python -m skulens.cli ARGS`` is ``skulens ARGS``."""
import sys

from skulens.cli._main import main

if __name__ == "__main__":
    sys.exit(main())
