"""An S3 endpoint given with ``--endpoint``, shaped like the embedded server the suites use by default."""
from __future__ import annotations

import sys
import uuid
from typing import Any, Dict, List, Optional

__all__ = ["ExternalServer"]


class ExternalServer:
    """An S3 endpoint given with ``--endpoint``, shaped like :class:`s3io.testing.servers.RcloneServer`.

    Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID``...,
    ``AWS_PROFILE``). ``make_bucket()`` returns ``--bucket`` when given, else
    creates a fresh bucket which the harness empties and deletes at exit.
    """

    kind = "external"

    def __init__(self, endpoint_url: str, region: Optional[str] = None, bucket: Optional[str] = None) -> None:
        import boto3

        session = boto3.session.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise RuntimeError(
                "--endpoint %s: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
                % endpoint_url
            )
        frozen = credentials.get_frozen_credentials()
        self.endpoint_url = endpoint_url
        self.access_key = frozen.access_key
        self.secret_key = frozen.secret_key
        self.session_token = frozen.token
        self.region = region or session.region_name or "us-east-1"
        self.bucket = bucket
        self._created: List[str] = []

    def __repr__(self) -> str:  # no credentials in a repr
        return "<ExternalServer %s>" % self.endpoint_url

    def env(self) -> Dict[str, str]:
        """Environment variables that point boto3 (and s3io) at this endpoint."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env

    def boto3_client(self, **config_kwargs):
        """A plain boto3 client for the endpoint (path-style, checksums only when required)."""
        import boto3
        from botocore.config import Config

        options = dict(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        options.update(config_kwargs)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.session_token,
            region_name=self.region,
            config=Config(**options),
        )

    def make_bucket(self, name: Optional[str] = None) -> str:
        """``--bucket`` if given (it must exist), else a fresh bucket deleted at exit."""
        client = self.boto3_client()
        if name is None and self.bucket is not None:
            client.head_bucket(Bucket=self.bucket)
            return self.bucket
        name = name or "s3io-bench-%s" % uuid.uuid4().hex[:12]
        kwargs: Dict[str, Any] = {}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        client.create_bucket(Bucket=name, **kwargs)
        self._created.append(name)
        return name

    def stop(self) -> None:
        """Empty and delete the buckets this run created (never ``--bucket``)."""
        created, self._created = self._created, []
        if not created:
            return
        client = self.boto3_client()
        for name in created:
            try:
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
                client.delete_bucket(Bucket=name)
            except Exception as error:  # leave it, but say so
                print("s3io.bench: could not delete bucket %s: %s" % (name, error), file=sys.stderr)
