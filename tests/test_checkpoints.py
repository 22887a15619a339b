"""S3Checkpoint (torch.save / torch.load) and S3LightningCheckpoint (a Lightning Trainer saves and resumes)."""
import os
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import require_peer
from s3io import S3Checkpoint, S3ClientConfig, S3ObjectNotFound

BAD_URIS = ["http://x/y", "s3://", "s3:///k", "", "s3://bucket-only/"]


def _state():
    gen = torch.Generator().manual_seed(5)
    return {"weight": torch.randn(64, 32, generator=gen), "step": 7, "name": "tiny"}


def test_torch_save_and_load_through_s3checkpoint(s3_server, bucket):
    checkpoint = S3Checkpoint(s3_server.region, endpoint=s3_server.endpoint_url)
    uri = f"s3://{bucket}/ckpt/epoch 1+ü.pt"
    state = _state()
    with checkpoint.writer(uri) as writer:
        torch.save(state, writer)
    with checkpoint.reader(uri) as reader:
        assert (reader.bucket, reader.key) == (bucket, "ckpt/epoch 1+ü.pt")
        loaded = torch.load(reader)
    assert torch.equal(loaded["weight"], state["weight"]) and loaded["step"] == 7 and loaded["name"] == "tiny"
    with pytest.raises(S3ObjectNotFound, match=f"s3://{bucket}/ckpt/missing.pt"):
        torch.load(checkpoint.reader(f"s3://{bucket}/ckpt/missing.pt"))
    # The reference's module path for the client.
    from s3io._s3client import S3Client as ReferencePathClient

    client = ReferencePathClient(s3_server.region, s3client_config=S3ClientConfig(endpoint_url=s3_server.endpoint_url))
    assert client.head_object(bucket, "ckpt/epoch 1+ü.pt").size > 0


@pytest.mark.parametrize("uri", BAD_URIS)
def test_s3checkpoint_bad_uris_raise_value_error_naming_the_uri(uri):
    checkpoint = S3Checkpoint("us-east-1")
    for make in (checkpoint.reader, checkpoint.writer):
        with pytest.raises(ValueError) as info:
            make(uri)
        assert repr(uri) in str(info.value)


def test_import_s3io_needs_no_lightning():
    code = (
        "import sys\n"
        "sys.modules['lightning'] = None  # importing it raises ImportError\n"
        "import s3io\n"
        "from s3io import S3Checkpoint, S3MapDataset, S3IterableDataset\n"
        "from s3io._s3client import S3Client, S3ClientConfig\n"
        "try:\n"
        "    import s3io.lightning\n"
        "except ImportError as exc:\n"
        "    print('lightning missing:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lightning missing:" in proc.stdout and "lightning" in proc.stdout.split(":", 1)[1]


# -- Lightning ------------------------------------------------------------------------------------------


def _lightning_module(pl):
    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.steps_run = 0

        def training_step(self, batch, batch_idx):
            self.steps_run += 1
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            gen = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen))
            return torch.utils.data.DataLoader(data, batch_size=2)

    return Tiny


def _trainer(pl, checkpoint_io, max_steps, root):
    return pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, plugins=[checkpoint_io], default_root_dir=str(root),
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )


def test_a_lightning_trainer_saves_and_resumes_through_s3(s3_server, bucket, tmp_path):
    pl = require_peer("lightning.pytorch")
    from s3io.lightning import S3LightningCheckpoint

    checkpoint_io = S3LightningCheckpoint(s3_server.region, endpoint=s3_server.endpoint_url)
    uri = f"s3://{bucket}/lightning/step-2.ckpt"
    Tiny = _lightning_module(pl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the dataloader does not have many workers", ...
        first = Tiny()
        trainer = _trainer(pl, checkpoint_io, 2, tmp_path)
        trainer.fit(first)
        trainer.save_checkpoint(uri)
        saved = {k: v.clone() for k, v in first.state_dict().items()}

        loaded = checkpoint_io.load_checkpoint(uri)
        assert loaded["global_step"] == 2
        assert all(torch.equal(loaded["state_dict"][k], v) for k, v in saved.items())

        resumed = Tiny()
        seen = {}
        resumed.on_load_checkpoint = lambda checkpoint: seen.update(step=checkpoint["global_step"])
        trainer = _trainer(pl, checkpoint_io, 4, tmp_path)
        trainer.fit(resumed, ckpt_path=uri)
    assert seen == {"step": 2} and trainer.global_step == 4
    assert resumed.steps_run == 2  # steps 3 and 4 only: it went on from the checkpoint

    checkpoint_io.remove_checkpoint(uri)
    with pytest.raises(S3ObjectNotFound, match=uri):
        checkpoint_io.load_checkpoint(uri)
    with pytest.raises(TypeError, match="'PosixPath' is not a supported type"):
        checkpoint_io.save_checkpoint({}, pathlib.Path("/tmp/x.ckpt"))
    with pytest.raises(ValueError, match="'s3://'"):
        checkpoint_io.remove_checkpoint("s3://")
    checkpoint_io.teardown()
    assert not any(name.endswith(".ckpt") for _, _, files in os.walk(tmp_path) for name in files)
