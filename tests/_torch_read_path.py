"""S3StorageReader driven by torch's own per-file ``read_data`` (not s3io's load pipeline).

Tests use it to exercise ``DCPOptimizedS3Reader`` through ``create_stream``, the
path torch takes for storage readers without a pipeline of their own.
"""
from torch.distributed.checkpoint import FileSystemReader

from s3io.dcp import S3StorageReader


class TorchReadPath(S3StorageReader):
    """S3StorageReader with torch's per-file read_data: DCPOptimizedS3Reader through create_stream."""

    def read_data(self, plan, planner):
        return FileSystemReader.read_data(self, plan, planner)
