"""Where a bucket's requests go: its base URL, connection pool and signer (cached per bucket).

botocore decides the URL once per bucket and region (its endpoint rules:
virtual-hosted or path-style addressing, FIPS, dual-stack, accelerate,
custom endpoints) through ``generate_presigned_url``; after that s3io builds
each request itself.  A bucket the lean path cannot serve gets no route and
its requests go through boto3: access-point and Outposts ARNs, directory
buckets (S3 Express session auth), endpoints reached through an HTTP proxy,
clients without credentials (so that botocore reports it), and clients with a
``before-send`` hook (moto's ``mock_aws`` answers requests there; a user's
hook expects to see every request).
"""
from __future__ import annotations

import ssl
import threading
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import quote, urlsplit

import botocore.httpsession
import botocore.utils

from ._config import S3ClientConfig
from ._http import ConnectionPool, Origin
from ._sigv4 import Signer, canonical_path

__all__ = ["Route", "Routes", "query_string"]

_PROBE_KEY = "s3io-route-probe"


class Route:
    """One bucket's requests: the pool of its origin, the path prefix, the signer (None: unsigned)."""

    __slots__ = ("pool", "prefix", "signer", "region")

    def __init__(self, pool: ConnectionPool, prefix: str, signer: Optional[Signer], region: str) -> None:
        self.pool = pool
        self.prefix = prefix  # "/bucket" (path-style) or "" (virtual-hosted)
        self.signer = signer
        self.region = region

    def path(self, key: str) -> str:
        """The encoded request path of ``key`` (also the signed path)."""
        return self.prefix + "/" + canonical_path(key)

    def __repr__(self) -> str:
        return f"Route({self.pool.origin!r}{self.prefix}, region={self.region!r})"


class Routes:
    """The routes of one client in one process.

    Parameters
    ----------
    config : S3ClientConfig
    session : boto3.session.Session
        Gives the credentials, the CA bundle and the default region.
    boto3_client : callable
        ``boto3_client(region)`` returns the client for a region (None: the default one).
    endpoint_url : str or None
    """

    def __init__(self, config: S3ClientConfig, session, boto3_client: Callable, endpoint_url: Optional[str]) -> None:
        self._config = config
        self._session = session
        self._boto3_client = boto3_client
        self._endpoint_url = endpoint_url
        self._routes: Dict[Tuple[str, Optional[str]], Optional[Route]] = {}
        self._pools: Dict[tuple, ConnectionPool] = {}
        self._signers: Dict[str, Signer] = {}
        self._ssl: Optional[ssl.SSLContext] = None
        self._lock = threading.Lock()
        credentials = None if config.unsigned else session.get_credentials()
        self._credentials = credentials
        self.default_region = session.region_name or "us-east-1"

    def get(self, bucket: str, region: Optional[str] = None) -> Optional[Route]:
        """The route of ``bucket`` (in ``region`` after a redirect); None: send it through boto3."""
        key = (bucket, region)
        try:
            return self._routes[key]
        except KeyError:
            pass
        route = self._build(bucket, region)
        with self._lock:
            self._routes[key] = route
        return route

    def redirect(self, bucket: str, region: str) -> Optional[Route]:
        """Use ``region`` for ``bucket`` from now on (the store said the bucket lives there)."""
        route = self.get(bucket, region)
        with self._lock:
            self._routes[(bucket, None)] = route
        return route

    def _build(self, bucket: str, region: Optional[str]) -> Optional[Route]:
        if bucket.startswith("arn:") or bucket.endswith("--x-s3"):
            return None  # access points, Outposts, Object Lambda, directory buckets: botocore's rules and auth
        if self._credentials is None and not self._config.unsigned:
            return None  # botocore raises its NoCredentialsError on the request
        client = self._boto3_client(region)
        if _has_send_hooks(client):
            return None
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60)
        base = url.split("?", 1)[0]
        suffix = "/" + _PROBE_KEY
        if not base.endswith(suffix):
            return None  # an endpoint layout this module does not know: leave it to botocore
        base = base[: -len(suffix)]
        if self._uses_proxy(base, client):
            return None
        parts = urlsplit(base)
        origin = Origin(f"{parts.scheme}://{parts.netloc}")
        signing_region = client.meta.region_name or self.default_region
        signer = None if self._config.unsigned else self._signer(signing_region)
        return Route(self._pool(origin), parts.path, signer, signing_region)

    def _uses_proxy(self, url: str, client) -> bool:
        configured = getattr(client.meta.config, "proxies", None) or {}
        scheme = urlsplit(url).scheme
        return bool(configured.get(scheme) or botocore.utils.get_environ_proxies(url).get(scheme))

    def _signer(self, region: str) -> Signer:
        with self._lock:
            signer = self._signers.get(region)
            if signer is None:
                signer = self._signers[region] = Signer(self._credentials, region)
            return signer

    def _pool(self, origin: Origin) -> ConnectionPool:
        with self._lock:
            pool = self._pools.get(origin.key())
            if pool is None:
                context = self._ssl_context() if origin.scheme == "https" else None
                pool = self._pools[origin.key()] = ConnectionPool(
                    origin, self._config.connect_timeout, self._config.read_timeout, context
                )
            return pool

    def _ssl_context(self) -> ssl.SSLContext:
        # The CA bundle botocore would use: AWS_CA_BUNDLE / ca_bundle in the config, else its default.
        if self._ssl is None:
            bundle = self._session._session.get_config_variable("ca_bundle")  # the botocore session's settings
            cafile = botocore.httpsession.get_cert_path(bundle or True)
            self._ssl = ssl.create_default_context(cafile=cafile)
        return self._ssl

    def close(self) -> None:
        """Close every pool's idle connections."""
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()


def _has_send_hooks(client) -> bool:
    """True if something listens on the client's ``before-send`` event (botocore itself registers nothing there).

    moto adds its stubber to every client once ``moto.core`` is imported, and
    answers requests only while a mock is active (its ``enabled`` flag): a
    disabled stubber does not count.
    """
    try:
        handlers = list(client.meta.events._emitter._handlers.prefix_search("before-send.s3.GetObject"))
    except AttributeError:  # another botocore layout: assume no hooks
        return False
    return any(getattr(handler, "enabled", True) for handler in handlers)


def query_string(params: Dict[str, str]) -> str:
    """A canonical (sorted, encoded) query string, as SigV4 signs it and the request sends it."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(str(v), safe='-_.~')}" for k, v in sorted(params.items()))
