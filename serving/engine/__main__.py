"""`python -m serving.engine RUN_DIR INDEX DEVICE`: how the supervisor starts engine INDEX of the server at RUN_DIR
on DEVICE (cpu, or cuda: the one GPU its CUDA_VISIBLE_DEVICES names)."""

import sys

from serving.engine.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
