"""``python -m runtime_bench MODEL.onnx ...`` is ``skulens bench MODEL.onnx ...``."""
import sys

from sdk._cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
