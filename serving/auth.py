"""API keys, roles and per-key limits of the service (docs/security.md).

A key is a random token (`eo_` + 43 URL-safe characters: 256 bits from `secrets`) that the client sends as
`authorization: Bearer <token>` (gRPC metadata) or `Authorization: Bearer <token>` (HTTP). The key file
holds only the SHA-256 of each token, beside its name, role and creation time:

    {"keys": [{"name": "ops", "role": "operate", "hash": "sha256:9f86d0...", "created": "2026-12-02T12:00:00+00:00"}]}

A plain hash suffices: slow KDFs (bcrypt, scrypt, Argon2) exist to make guessing a *low-entropy* password
from its hash expensive; a 256-bit random token cannot be guessed whatever the hash costs (2^256 tries), so
one SHA-256 per request is enough, and it lets a replica find a key by its digest in a dict, in constant
time, with no per-key comparison to leak timing.

Roles, each including the ones before it: `read` (forecasts, model info, accuracy, archive, anomaly lists
and DetectAnomalies on caller-supplied data, zones, readings, model decisions) < `write` (IngestReadings,
StreamReadings) < `operate` (OptimizeDispatch; and whatever operations on the running service are added
later). Health checks (grpc.health.v1 Check/Watch, /healthz) and the dashboard's static files are open.

Replicas re-read the key file when it changes (its size, mtime or inode; looked at most once a second), so
`energyopt keys revoke` takes effect within a second or so without a restart. Rate and concurrency limits
are per key and per replica (`Limiter`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc

from serving.engine import ApiError

logger = logging.getLogger("ray.serve")

ROLES = ("read", "write", "operate")  # each includes the ones before it
RANK = {role: i for i, role in enumerate(ROLES)}
OPEN = None  # the role of the operations anyone may call

# The role each RPC needs (an HTTP route needs its mirrored RPC's); an RPC not listed needs `operate`, so
# that a method added later is closed until someone decides otherwise.
METHOD_ROLES: dict[str, str | None] = {
    **dict.fromkeys(("ForecastRegion", "ForecastSeries", "DetectAnomalies", "GetModelInfo", "ListForecasts",
                     "GetForecastAccuracy", "ListAnomalies", "ListZones", "ListReadings", "ListModelDecisions"),
                    "read"),
    **dict.fromkeys(("IngestReadings", "StreamReadings"), "write"),
    "OptimizeDispatch": "operate",
    **dict.fromkeys(("Check", "Watch", "List"), OPEN),  # grpc.health.v1
}

TOKEN_PREFIX = "eo_"
MISSING = "missing API key: send 'authorization: Bearer <key>'"
RELOAD_S = 1.0  # the key file is looked at (a stat) at most this often


class AuthError(ValueError):
    """A key file that cannot be read or written, a bad name or role."""


class RateLimitError(ApiError):
    """RESOURCE_EXHAUSTED for a key over its rate or concurrency limit: HTTP 429 with Retry-After (the other
    RESOURCE_EXHAUSTED errors, oversized requests, stay 413)."""

    http_status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Key:
    name: str
    role: str
    hash: str
    created: str


def role_needed(method: str) -> str | None:
    return METHOD_ROLES.get(method, "operate")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def bearer(value: str | None) -> str | None:
    """The token of an `authorization` value 'Bearer <token>' (scheme case-insensitive), None without one."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


# ---------------------------------------------------------------------------------------------- key file

def read_keys(path: str | Path) -> list[Key]:
    """The keys of the file at `path` (a missing file: none); AuthError for one that is not a key file."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text() or "{}")
        keys = [Key(str(k["name"]), str(k["role"]), str(k["hash"]), str(k.get("created", "")))
                for k in data.get("keys", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise AuthError(f"key file {path}: not a key file ({type(err).__name__}: {err})") from None
    for k in keys:
        if k.role not in RANK:
            raise AuthError(f"key file {path}: key {k.name!r} has role {k.role!r}; roles are {', '.join(ROLES)}")
    return keys


def write_keys(path: str | Path, keys: list[Key]) -> None:
    """Replace the key file atomically (replicas never read half a file), readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"keys": [asdict(k) for k in keys]}, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def create_key(path: str | Path, name: str, role: str) -> str:
    """Add a key named `name` with `role` to the file and return its token (shown once: only its hash is kept)."""
    if role not in RANK:
        raise AuthError(f"role {role!r}: roles are {', '.join(ROLES)}")
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AuthError(f"name {name!r}: letters, digits, '-', '_' and '.' only")
    keys = read_keys(path)
    if any(k.name == name for k in keys):
        raise AuthError(f"a key named {name!r} exists in {path}; revoke it first or pick another name")
    token = new_token()
    write_keys(path, [*keys, Key(name, role, hash_token(token), datetime.now(UTC).isoformat(timespec="seconds"))])
    return token


def revoke_key(path: str | Path, name: str) -> Key:
    """Remove the key named `name` from the file (replicas refuse it within about a second)."""
    keys = read_keys(path)
    found = [k for k in keys if k.name == name]
    if not found:
        raise AuthError(f"no key named {name!r} in {path}")
    write_keys(path, [k for k in keys if k.name != name])
    return found[0]


class KeyRing:
    """The keys of a key file by their hash, re-read when the file changes (looked at every RELOAD_S)."""

    def __init__(self, path: str | Path, reload_s: float = RELOAD_S) -> None:
        self.path, self.reload_s = Path(path), reload_s
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._next_look = 0.0
        self._by_hash: dict[str, Key] = {}
        self._load(self._file_stamp(), strict=True)

    def __len__(self) -> int:
        return len(self._by_hash)

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _load(self, stamp: tuple | None, strict: bool = False) -> None:
        if stamp is None and strict:
            raise AuthError(f"no key file {self.path} (create one: energyopt keys create --file {self.path} ...)")
        try:
            keys = read_keys(self.path)
        except AuthError as err:
            if strict:
                raise
            logger.warning("%s; keeping the %d keys read before", err, len(self._by_hash))
            return
        self._by_hash = {k.hash: k for k in keys}
        self._stamp = stamp

    def refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_look:
            return
        with self._lock:
            self._next_look = now + self.reload_s
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._load(stamp)
                logger.info("key file %s re-read: %d keys", self.path, len(self._by_hash))

    def lookup(self, token: str) -> Key | None:
        self.refresh()
        return self._by_hash.get(hash_token(token))


class Limiter:
    """Per key (by name), in this process: a token bucket of `rate` requests a second holding up to `burst`,
    and at most `max_concurrent` requests in flight. None: no such limit."""

    def __init__(self, rate: float | None = None, burst: int | None = None,
                 max_concurrent: int | None = None) -> None:
        self.rate, self.max_concurrent = rate, max_concurrent
        self.burst = float(burst if burst is not None else max(1, math.ceil(rate or 1)))
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._in_flight: dict[str, int] = {}

    def acquire(self, key: str) -> Callable[[], None] | None:
        """A release callable for the admitted request (None when nothing needs releasing); RateLimitError when
        the key is over a limit."""
        if self.rate is not None:
            now = time.monotonic()
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1:
                wait = (1 - tokens) / self.rate
                self._buckets[key] = (tokens, now)
                raise RateLimitError(f"rate limit: key {key!r} is over {self.rate:g} requests/s (burst "
                                  f"{self.burst:g}) on this replica; retry in {wait:.2f} s", wait)
            self._buckets[key] = (tokens - 1, now)
        if self.max_concurrent is None:
            return None
        n = self._in_flight.get(key, 0)
        if n >= self.max_concurrent:
            raise RateLimitError(f"concurrency limit: key {key!r} has {n} requests in flight on this replica "
                              f"(max_concurrent_per_key {self.max_concurrent}); retry when one is answered", 1.0)
        self._in_flight[key] = n + 1

        def release() -> None:
            left = self._in_flight.get(key, 1) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)

        return release


class Gate:
    """What a replica checks before answering a client: its key (UNAUTHENTICATED without a known one), the
    key's role (PERMISSION_DENIED short of the method's) and the key's limits (RESOURCE_EXHAUSTED). Without a
    key ring (no key file configured) every call passes."""

    def __init__(self, keys: KeyRing | None, limiter: Limiter | None = None) -> None:
        self.keys, self.limiter = keys, limiter

    @classmethod
    def from_args(cls, api_keys: str | None, rate_per_key_s: float | None = None, burst_per_key: int | None = None,
                  max_concurrent_per_key: int | None = None) -> Gate:
        if not api_keys:
            return cls(None)
        return cls(KeyRing(api_keys), Limiter(rate_per_key_s, burst_per_key, max_concurrent_per_key))

    def admit(self, method: str, authorization: str | None) -> Callable[[], None] | None:
        """Check a call of `method` with the `authorization` value it came with; a release callable for when it
        is answered (or None)."""
        needed = role_needed(method)
        if self.keys is None or needed is OPEN:
            return None
        token = bearer(authorization)
        if token is None:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, MISSING)
        key = self.keys.lookup(token)
        if key is None:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        if RANK[key.role] < RANK[needed]:
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED,
                           f"{method} needs role {needed!r}; key {key.name!r} has role {key.role!r}")
        return self.limiter.acquire(key.name) if self.limiter is not None else None


def grpc_authorization(grpc_context: object) -> str | None:
    """The `authorization` metadata of a call (Serve's RayServegRPCContext, or a grpc ServicerContext)."""
    for key, value in grpc_context.invocation_metadata():
        if key == "authorization":
            return value
    return None


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def startup_check(config: dict) -> str:
    """The banner line on authentication for a Serve `config` (ServeDeploySchema form, serving/server.py):
    'authentication: on (N keys, FILE)' or 'off (...)'. AuthError when no key file is configured and HTTP is
    bound to another address than loopback, or when the configured key file cannot be read."""
    app = next(a for a in config.get("applications", []) if a.get("name") == "energyopt")
    path = (app.get("args") or {}).get("api_keys")
    host = str((config.get("http_options") or {}).get("host", "127.0.0.1"))
    if path:
        n = len(KeyRing(path))
        return (f"authentication: on ({n} key{'s' * (n != 1)}, {path})" if n else
                f"authentication: on (no keys yet in {path}: every call but health checks is refused; "
                "add one with `energyopt keys create`)")
    if host not in LOOPBACK and not host.startswith("127."):
        raise AuthError(f"http_options.host is {host}, not loopback, and no API key file is configured: "
                        "refusing to serve without authentication. Create keys (`energyopt keys create --name "
                        "NAME --role read --file runs/api-keys.json`) and set args.api_keys to that file, or bind "
                        "HTTP to 127.0.0.1 (docs/security.md)")
    return ("authentication: off (loopback only; note that Serve's gRPC ports listen on all interfaces: "
            "set args.api_keys on a shared host, docs/security.md)")
