"""S3LightningCheckpoint: Lightning's CheckpointIO over S3 objects."""
from __future__ import annotations

from typing import Any, Dict, Optional

import lightning
import torch
from lightning.pytorch.plugins.io import CheckpointIO
from packaging.version import Version  # a dependency of lightning

from .._client import S3Client
from .._config import S3ClientConfig
from .._s3dataset_common import parse_object_uri

__all__ = ["S3LightningCheckpoint"]


# Lightning before 2.6 loaded with weights_only=False; from 2.6 on it lets torch decide.
_LIGHTNING_LETS_TORCH_DECIDE = Version(lightning.__version__) >= Version("2.6.0")


class S3LightningCheckpoint(CheckpointIO):
    """A checkpoint manager for S3 using Lightning's :class:`CheckpointIO` interface.

    Pass it to the Trainer, and give it ``s3://bucket/key`` paths::

        checkpoint_io = S3LightningCheckpoint("us-east-1")
        trainer = Trainer(plugins=[checkpoint_io], ...)
        trainer.fit(model)
        trainer.save_checkpoint("s3://bucket/run/last.ckpt")
        trainer.fit(model, ckpt_path="s3://bucket/run/last.ckpt")   # resume

    Parameters
    ----------
    region : str
        AWS region of the bucket.
    s3client_config : S3ClientConfig, optional
    endpoint : str, optional
        S3 endpoint URL.
    """

    def __init__(self, region: str, s3client_config: Optional[S3ClientConfig] = None, endpoint: Optional[str] = None) -> None:
        self.region = region
        self._client = S3Client(
            region, endpoint=endpoint, user_agent=f"lightning/{lightning.__version__}", s3client_config=s3client_config
        )

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: str, storage_options: Optional[Any] = None) -> None:
        """Save model and training state with ``torch.save``, uploaded to S3.

        Parameters
        ----------
        checkpoint : dict
            Model and trainer state.
        path : str
            ``s3://bucket/key`` to write.
        storage_options
            Unused (accepted for the interface).

        Raises
        ------
        TypeError
            ``path`` is not a str.
        S3Exception
            An error accessing S3; no object is left behind.
        """
        bucket, key = self._parse(path)
        with self._client.put_object(bucket, key) as writer:
            torch.save(checkpoint, writer)

    def load_checkpoint(self, path: str, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
        """Load a checkpoint from S3 (resuming, or for test, validate and predict).

        Parameters
        ----------
        path : str
            ``s3://bucket/key`` of the checkpoint.
        map_location
            As ``torch.load``'s: a function, device, string or dict remapping storage locations.
        weights_only : bool, optional
            True: only tensors and primitive types (safe for untrusted files);
            False: any pickled object.  None: torch's default with Lightning
            >= 2.6, False before (Lightning's own behaviour).

        Returns
        -------
        dict
            The loaded checkpoint.

        Raises
        ------
        S3Exception
            An error accessing S3 (``S3ObjectNotFound``, ...).
        """
        bucket, key = self._parse(path)
        if weights_only is None and not _LIGHTNING_LETS_TORCH_DECIDE:
            weights_only = False
        with self._client.get_object(bucket, key) as reader:
            return torch.load(reader, map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: str) -> None:
        """Delete the checkpoint object at ``path`` (no error if it does not exist).

        Raises
        ------
        S3Exception
            An error accessing S3.
        """
        bucket, key = self._parse(path)
        self._client.delete_object(bucket, key)

    def teardown(self) -> None:
        """Called by Lightning when the process tears down; nothing to release."""

    @staticmethod
    def _parse(path: str):
        if not isinstance(path, str):
            raise TypeError(
                f"{type(path).__name__!r} is not a supported type for 'path'. Must be a string formatted as an S3 uri."
            )
        return parse_object_uri(path)
