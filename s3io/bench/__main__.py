"""``python -m s3io.bench [SUITE ...] [--json PATH] [--plot PATH] [--endpoint URL] [--repeat N] [--quick] [--minutes N]``."""
import signal
import sys

from s3io.bench._harness import main


def _exit_on_sigterm(signum, frame):
    # Python's default SIGTERM handling skips finally blocks and atexit: the embedded
    # server's process would stop (parent-death signal) but its temp dir would stay.
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
