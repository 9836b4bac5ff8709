"""Who may call, decided on a call's metadata before any of its request message is read.

gRPC's synchronous server runs a unary handler on a pool thread that first waits for the request
message: a caller that sends headers and never a message holds that thread until its deadline.
So `CallGuard`, a server interceptor, never hands an unauthenticated call to the real handler:
it answers with a request-streaming handler that aborts UNAUTHENTICATED at once, without reading
(the thread is back in the pool in microseconds).  An authenticated call is wrapped the same way
so that its peer's slot is taken before the message is read: one peer (an IP address; every port
and connection of it together) holds at most `max_calls_per_peer` calls, one more is refused
RESOURCE_EXHAUSTED at once.  Health checks need no key (load balancers probe without one) but
count against their peer's limit.

Keys come from a file (one per line, '#' comments), from $SOFTNPU_API_KEYS (separated by commas
or white space) or from `--api-key` (visible to every user of the machine in `ps`: for tests).
"""

from __future__ import annotations

import collections
import hmac
import os
import re
import threading
from pathlib import Path

import grpc

__all__ = ["CallGuard", "PeerLimit", "load_api_keys", "env_api_keys", "ENV_KEYS", "OPEN_METHODS"]

ENV_KEYS = "SOFTNPU_API_KEYS"
OPEN_METHODS = ("/grpc.health.v1.Health/",)


def load_api_keys(path: str | Path) -> list[str]:
    """API keys from a file: one per line; blank lines and lines starting with '#' are skipped."""
    keys = [line.strip() for line in Path(path).read_text().splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ValueError(f"{path}: no API keys in the file")
    return keys


def env_api_keys(environ=os.environ) -> list[str]:
    """API keys from $SOFTNPU_API_KEYS (commas or white space between keys); [] when unset."""
    return [k for k in re.split(r"[\s,]+", environ.get(ENV_KEYS, "")) if k]


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5432' -> 'ipv4:127.0.0.1', 'ipv6:[::1]:5432' -> 'ipv6:[::1]'; a Unix
    socket peer stays whole."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer


class PeerLimit:
    """Concurrent calls per peer host, at most `limit` each."""

    def __init__(self, limit: int):
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_calls_per_peer must be a positive int, got {limit!r}")
        self.limit = limit
        self._calls: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def acquire(self, peer: str) -> bool:
        with self._lock:
            if self._calls[peer] >= self.limit:
                return False
            self._calls[peer] += 1
            return True

    def release(self, peer: str) -> None:
        with self._lock:
            self._calls[peer] -= 1
            if self._calls[peer] <= 0:
                del self._calls[peer]

    def calls(self, peer: str | None = None) -> int:
        """Calls in progress of one peer host, or of all."""
        with self._lock:
            return self._calls[peer] if peer is not None else sum(self._calls.values())


_MAKE = {(False, False): grpc.unary_unary_rpc_method_handler,
         (False, True): grpc.unary_stream_rpc_method_handler,
         (True, False): grpc.stream_unary_rpc_method_handler,
         (True, True): grpc.stream_stream_rpc_method_handler}


def _rejecting(handler, code: grpc.StatusCode, message: str):
    """A handler that aborts at once and never reads the request: request-streaming, so the
    server hands it the (unread) request stream instead of waiting for a message."""
    def reject(request_iterator, context):
        context.abort(code, message)

    make = _MAKE[(True, handler.response_streaming)]
    return make(reject, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def _behaviour(handler):
    return (handler.unary_unary or handler.unary_stream or handler.stream_unary
            or handler.stream_stream)


def _admitting(handler, peers: PeerLimit):
    """`handler` behind a per-peer slot that is taken before the request is read."""
    inner = _behaviour(handler)

    def admit(context) -> None:
        peer = peer_host(context.peer())
        if not peers.acquire(peer):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many concurrent calls from {peer} (limit {peers.limit} per peer)")
        if not context.add_callback(lambda: peers.release(peer)):    # the call already ended
            peers.release(peer)

    def first(request_iterator, context):
        request = next(request_iterator, None)
        if request is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message was sent")
        return request

    if handler.request_streaming:
        def behaviour(request_iterator, context):
            admit(context)
            return inner(request_iterator, context)
    else:
        def behaviour(request_iterator, context):
            admit(context)
            return inner(first(request_iterator, context), context)

    make = _MAKE[(True, handler.response_streaming)]
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class CallGuard(grpc.ServerInterceptor):
    """API keys (`authorization: Bearer <key>` or the bare key) and a per-peer call limit, both
    decided before the request message is read.  keys: None or [] accepts every caller."""

    def __init__(self, keys=None, max_calls_per_peer: int | None = None,
                 open_methods: tuple[str, ...] = OPEN_METHODS):
        self._keys = [k.encode() for k in (keys or ())]
        if any(not k for k in self._keys):
            raise ValueError("an API key must not be empty")
        self.peers = PeerLimit(max_calls_per_peer) if max_calls_per_peer else None
        self.open_methods = tuple(open_methods)
        self.rejected = collections.Counter()       # unauthenticated, ... (for metrics and tests)

    def _valid(self, value) -> bool:
        value = value.decode(errors="replace") if isinstance(value, bytes) else value
        token = value[7:].strip() if value[:7].lower() == "bearer " else value.strip()
        token = token.encode()
        # compare against every key, so the time taken does not tell which one nearly matched
        return sum(hmac.compare_digest(token, k) for k in self._keys) > 0

    def denial(self, metadata) -> str | None:
        """Why a call with this metadata ((key, value) pairs) is refused; None: it is not."""
        if not self._keys:
            return None
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return "missing API key: send it as 'authorization: Bearer <key>' metadata"
        return None if self._valid(values[0]) else "invalid API key"

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if self._keys and not handler_call_details.method.startswith(self.open_methods):
            denial = self.denial(handler_call_details.invocation_metadata)
            if denial is not None:
                self.rejected["unauthenticated"] += 1
                return _rejecting(handler, grpc.StatusCode.UNAUTHENTICATED, denial)
        if self.peers is not None:
            return _admitting(handler, self.peers)
        return handler
