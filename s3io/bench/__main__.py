"""``python -m s3io.bench [SUITE ...] [--json PATH] [--plot PATH] [--endpoint URL] [--repeat N] [--quick] [--minutes N]``."""
import sys

from s3io.bench._harness import main

if __name__ == "__main__":
    sys.exit(main())
