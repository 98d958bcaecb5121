"""The worker's HTTP surface on Faust's own web server: health, metrics, profiles, top-K.

=============================  ===============================================================
``GET /healthz``               JSON; 200 when a broker answers a Kafka request and the
                               catalogue is loaded, 503 otherwise (readiness: route traffic
                               here or not; a frozen or hung broker counts as unreachable)
``GET /metrics``               Prometheus text format (:mod:`stream.telemetry`)
``GET /users/{id}/profile``    the profile summary ``recstream profile`` prints; 404 if unknown
``GET /users/{id}/recommendations``  top-K now, by :meth:`Processor.recommend`; 404 if unknown
=============================  ===============================================================

Users are partitioned: a user's profile lives in the LMDB of the worker that owns the user's
input partition. A user request that reaches another worker is forwarded to the owner, found
from Faust's partition assignment (``app.router.external_topics_metadata()``, every member's
URL and partitions) and the Kafka default partitioner (murmur2 of the key, as producers use).
Faust's ``topic_route`` does the same but hashes with the producer's metadata, which knows
only topics the worker produces to, so it cannot route by an input topic. A forwarded request
carries ``X-Recstream-Routed`` and is never forwarded twice; the owner answers 404 when it
does not know the user. During a rebalance (no owner known) the answer is 503.

Reads use LMDB read transactions (snapshots: they never block the writer). They run in the
store's owner (stream.owner) because the in-memory catalogue is only consistent there, so a
request waits for at most the flushes already submitted.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

import faust
from aiokafka.partitioner import DefaultPartitioner
from faust.web import Request, Response, View
from yarl import URL

from stream.inspect import summarise_profile
from stream.security import ssl_context
from stream.telemetry import CONTENT_TYPE

if TYPE_CHECKING:
    from stream.app import WorkerContext
    from stream.owner import StoreState

__all__ = ["BrokerProbe", "health", "register_views"]

log = logging.getLogger(__name__)

ROUTED_HEADER = "X-Recstream-Routed"


class BrokerProbe:
    """Does any bootstrap broker answer a Kafka request? Cached for ``ttl_s``.

    One ApiVersions request on a fresh connection, not just a TCP connect: a frozen broker
    (stopped process, hung host) still completes TCP handshakes from its listen backlog but
    answers nothing. Cheap enough for every probe; the Kafka clients reconnect by themselves
    once the broker is back.
    """

    def __init__(self, bootstrap: str, timeout_s: float = 2.0, ttl_s: float = 2.0, ssl: Any = None) -> None:
        self.servers = [s.rsplit(":", 1) for s in bootstrap.split(",") if s]
        self.ssl = ssl  #: an SSLContext for SSL and SASL_SSL listeners (stream.security.ssl_context)
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self._checked = float("-inf")
        self._result: tuple[bool, str | None] = (False, "not checked")

    async def check(self) -> tuple[bool, str | None]:
        if time.monotonic() - self._checked < self.ttl_s:
            return self._result
        error = "no bootstrap servers"
        for host, port in self.servers:
            try:
                await asyncio.wait_for(_api_versions(host, int(port), self.ssl), self.timeout_s)
            except asyncio.TimeoutError:
                error = f"{host}:{port}: no answer to ApiVersions within {self.timeout_s:g} s"
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                error = f"{host}:{port}: {str(exc) or type(exc).__name__}"
                continue
            self._result = (True, None)
            break
        else:
            self._result = (False, error)
        self._checked = time.monotonic()
        return self._result


#: ApiVersions v0 (api key 18), correlation id 0x72730001, client id "recstream-probe".
_CLIENT_ID = b"recstream-probe"
_API_VERSIONS = struct.pack(">hhih", 18, 0, 0x72730001, len(_CLIENT_ID)) + _CLIENT_ID


async def _api_versions(host: str, port: int, ssl: Any = None) -> None:
    """Send one ApiVersions request and check the answer's correlation id (Kafka answers
    ApiVersions before SASL authentication)."""
    reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
    try:
        writer.write(struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS)
        await writer.drain()
        size, correlation = struct.unpack(">ii", await reader.readexactly(8))
        if correlation != 0x72730001 or size < 4:
            raise ValueError("not a Kafka answer")
    finally:
        writer.close()


async def health(app: faust.App, ctx: WorkerContext, probe: BrokerProbe) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of ``/healthz``."""
    reachable, error = await probe.check()
    try:
        assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
    except Exception:  # consumer not started yet
        assigned = []
    ready = ctx.ready.is_set()
    status = "ok" if reachable and ready else ("broker unreachable" if not reachable else "starting")
    body = {
        "status": status,
        "broker": {"reachable": reachable, "error": error},
        "consumer": {"assigned_partitions": assigned, "rebalancing": bool(app.rebalancing)},
        "catalogue": {"ready": ready, "items": ctx.catalogue_items},
        "pending_events": ctx.buffer.pending,
        "last_flush_age_s": ctx.metrics.last_flush_age_s(),
    }
    return (200 if status == "ok" else 503), body


def consumer_lag(app: faust.App, ctx: WorkerContext) -> list[tuple[str, int, int]]:
    """(topic, partition, lag) per assigned input partition: high-water − (applied + 1).

    The applied offset is the store's (committed with the profiles, as of the last flush); a
    partition with nothing applied yet counts from offset 0. Partitions without a fetched
    high-water mark yet are left out.
    """
    if not ctx.opened:
        return []
    try:
        assignment = app.consumer.assignment()
    except Exception:
        return []
    inputs = set(ctx.settings.topics.inputs.values())
    applied = ctx.applied_offsets
    out = []
    for tp in sorted(assignment):
        if tp.topic not in inputs:
            continue
        try:
            highwater = app.consumer.highwater(tp)
        except Exception:
            highwater = None
        if highwater is not None:
            out.append((tp.topic, tp.partition, max(0, highwater - applied.get((tp.topic, tp.partition), -1) - 1)))
    return out


def owner_url(app: faust.App, topic: str, user_id: str) -> URL | None:
    """The web URL of the worker that owns ``user_id``'s partition of ``topic``, if known.

    The partition count comes from the assignment itself (every partition has an owner), as
    the consumer's own topic metadata is only kept on the group leader.
    """
    owners = {p: url for url, topics in app.router.external_topics_metadata().items() for p in topics.get(topic, ())}
    if not owners:
        return None
    partitions = list(range(max(owners) + 1))
    return URL(owners[DefaultPartitioner()(user_id.encode(), partitions, partitions)])


def profile_of(state: StoreState, user_id: str) -> dict[str, Any] | None:
    """The user's profile summary, as ``recstream profile --json`` prints it; None if unknown.
    Runs with the store's owner (stream.owner), like the next one."""
    assert state.store is not None and state.catalogue is not None
    with state.store.read() as txn:
        rec = txn.get_profile(user_id)
        if rec is None:
            return None

        def title_of(item_id: str) -> str:
            item = txn.get_item(item_id)
            return item.title if item is not None else item_id

        return summarise_profile(state.settings, rec, state.catalogue.ids, state.catalogue.matrix, title_of)


def recommendations_for(state: StoreState, user_id: str) -> dict[str, Any] | None:
    """Top-K for the user's stored profile by the flush's own scoring; None if unknown.

    The same record a flush would emit now (seen items excluded per ``ranking.exclude_seen``).
    """
    assert state.store is not None and state.processor is not None
    with state.store.read() as txn:
        rec = txn.get_profile(user_id)
        seen = txn.get_seen(user_id) if rec is not None else set()
    if rec is None:
        return None
    out = state.processor.recommend([rec], {user_id: seen})
    return out[0] if out else {"user_id": user_id, "ts": rec.last_ts_ms, "items": [],
                               "event_count": rec.event_count, "profile_version": rec.version}


def _same_node(a: URL, b: URL) -> bool:
    return (a.host, a.port) == (b.host, b.port)


def register_views(app: faust.App, ctx: WorkerContext) -> None:
    """Add the views to ``app``'s web server and give the metrics their lag source."""
    probe = BrokerProbe(ctx.settings.broker.bootstrap, ssl=ssl_context(ctx.settings.broker))
    route_topic = next(iter(ctx.settings.topics.inputs.values()))  # inputs are co-partitioned
    ctx.metrics.lag = lambda: consumer_lag(app, ctx)

    async def routed(view: View, request: Request, user_id: str, local: Any) -> Response:
        """Answer locally when this worker owns the user, else forward to the owner."""
        if not ctx.ready.is_set():
            return view.json({"error": "worker starting"}, status=503)
        if request.headers.get(ROUTED_HEADER) is None:
            try:
                owner = owner_url(app, route_topic, user_id)
            except Exception:  # consumer not started or no assignment yet
                owner = None
            if owner is None:
                return view.json({"error": "partition owner unknown (rebalancing?)"}, status=503)
            if not _same_node(owner, URL(str(app.conf.canonical_url))):
                return await forward(view, request, owner)
        body = await ctx.owner.call(local, user_id)
        if body is None:
            return view.json({"error": f"unknown user {user_id!r}"}, status=404)
        return view.json(body)

    async def forward(view: View, request: Request, owner: URL) -> Response:
        url = request.url.with_scheme(owner.scheme or "http").with_host(owner.host or "").with_port(owner.port)
        try:
            async with app.http_client.get(url, headers={ROUTED_HEADER: "1"}) as response:
                return view.bytes(await response.read(), content_type=response.content_type, status=response.status)
        except Exception as exc:
            log.warning("forwarding %s to %s failed: %s", request.url.path, owner, exc)
            return view.json({"error": f"owner {owner} unreachable", "owner": str(owner)}, status=502)

    @app.page("/healthz")
    class Healthz(View):
        async def get(self, request: Request) -> Response:
            status, body = await health(app, ctx, probe)
            return self.json(body, status=status)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(ctx.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    @app.page("/users/{user_id}/profile")
    class UserProfile(View):
        async def get(self, request: Request, user_id: str) -> Response:
            return await routed(self, request, user_id, profile_of)

    @app.page("/users/{user_id}/recommendations")
    class UserRecommendations(View):
        async def get(self, request: Request, user_id: str) -> Response:
            return await routed(self, request, user_id, recommendations_for)
