"""A Faust transport: Faust's own aiokafka transport with a configurable fetch wait and a
hook that runs before a revocation touches the consumer's offset bookkeeping.

Faust creates its worker consumer with ``fetch_max_wait_ms=1500``. Brokers that answer a
parked fetch only when that wait expires (Tansu does) then hold records produced meanwhile
for up to 1.5 s. Registered under the ``faust.transports`` entry point as ``recstream`` and
used for the consumer only (``broker_consumer``); the producer keeps Faust's transport.

Faust's ``Consumer.on_partitions_revoked`` first forgets the revoked partitions' committed
offsets and acks, then waits for the un-acked records. Without a committed offset Faust
commits the first run of acked offsets even when an older record is still un-acked, so a
record left pending in a window past that point could be committed unapplied (lost on a
crash) or applied after the partition moved. The app's ``recstream_before_revoke`` hook
(:func:`stream.app.create_app`) therefore flushes every open window first.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["Transport"]


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when its fetcher starts (AIOKafkaConsumer.start); Faust
        # offers no setting for it.
        consumer._fetch_max_wait_ms = int(getattr(self.app, "recstream_fetch_max_wait_ms", 1500))
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        hook = getattr(self.app, "recstream_before_revoke", None)
        if hook is not None:
            await hook(revoked)
        await super().on_partitions_revoked(revoked)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
