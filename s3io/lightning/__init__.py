"""Lightning checkpoints on S3: :class:`S3LightningCheckpoint` (needs the ``lightning`` extra).

``pip install s3io[lightning]``; ``import s3io`` itself never needs Lightning.
"""
# Imported first for a clear ImportError naming lightning when it is missing.
import lightning  # noqa: F401

from .s3_lightning_checkpoint import S3LightningCheckpoint

__all__ = ["S3LightningCheckpoint"]
