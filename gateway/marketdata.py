"""Wiring of the market-data side: the simulator (optional), exchange streams, the bridge.

Every exchange stream and the bridge are children of the root supervisor:
streams PERMANENT with the configured backoff (healthy = connected and
subscribed), the bridge PERMANENT (its state is derived, so a restart
rebuilds it). Users hold :class:`supervision.ChildHandle` objects, which
reach the current incarnation after any restart.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.bridge import GetStats, InterestChanged, MarketDataBridgeActor, MarketPublisher, UpstreamInterest
from actors.exchange_stream import ExchangeStreamActor, StreamSettings
from gateway.config import Settings
from gateway.hub import Hub
from market.bybit import BYBIT
from market.model import Category
from supervision import ChildSpec, Restart, RestartPolicy, Supervisor

__all__ = ["MarketFeeds"]

log = logging.getLogger("gateway.market")

BRIDGE_ID = "bridge:market-data"


class MarketFeeds:
    def __init__(self, settings: Settings, hub: Hub, supervisor: Supervisor, metrics: Any) -> None:
        self.settings = settings
        self.hub = hub
        self.supervisor = supervisor
        self.metrics = metrics
        self.simulator: Any = None
        self.streams: dict[tuple[str, str], Any] = {}
        self.bridge: Any = None
        self.interest = UpstreamInterest()  # written by the bridge, read by each new stream incarnation
        self.publisher = MarketPublisher(hub)  # the tick path: streams → channels, one hop

    def url(self, category: str) -> str:
        if self.simulator is not None:
            return self.simulator.url(category)
        if self.settings.bybit_ws_base:
            return f"{self.settings.bybit_ws_base.rstrip('/')}/{category}"
        return BYBIT.public_url(Category(category), testnet=self.settings.bybit_testnet)

    def start(self) -> None:
        s = self.settings
        if s.market_source == "none":
            return
        if s.market_source == "simulator":
            from simulator.server import SimulatorServer

            self.simulator = SimulatorServer(host="127.0.0.1", port=0)
            self.simulator.start()
            log.info("simulated exchange on %s", self.simulator.url("spot").rsplit("/", 1)[0])
        policy = RestartPolicy(base=s.restart_base, cap=s.restart_cap, floor=min(s.restart_floor, s.restart_cap),
                               reset_after=s.restart_reset_after,
                               cooldown=max(s.circuit_cooldown, s.restart_floor))
        for category in s.market_categories:
            child_id = f"exchange:bybit:{category}"
            stream_settings = StreamSettings(url=self.url(category), ping_interval=s.upstream_ping_interval,
                                             stale_after=s.upstream_stale_after,
                                             data_silence=s.upstream_data_silence,
                                             canary_symbol=s.popular_pairs[0] if s.popular_pairs else None)
            spec = ChildSpec(child_id, "exchange_stream", self._stream_factory(category, stream_settings),
                             Restart.PERMANENT, policy, static=True)
            self.streams[("bybit", category)] = self.supervisor.start_child(spec)
        bridge_spec = ChildSpec(BRIDGE_ID, "bridge", self._bridge_factory, Restart.PERMANENT,
                                RestartPolicy(base=0.05, cap=5.0, floor=0.01), static=True)
        self.bridge = self.supervisor.start_child(bridge_spec)
        self.hub.on_channel_count.append(self._interest)

    def _stream_factory(self, category: str, stream_settings: StreamSettings) -> Any:
        def factory(context: Any) -> Any:
            # The new incarnation resubscribes to every topic still wanted.
            wanted = self.interest.topics("bybit", category)
            return ExchangeStreamActor.start(context, BYBIT, category, stream_settings, self.bridge, wanted,
                                             self.metrics, sink=self.publisher.handle)
        return factory

    def _bridge_factory(self, context: Any) -> Any:
        s = self.settings
        return MarketDataBridgeActor.start(
            context, self.hub, self.streams, popular=s.popular_pairs, grace=s.unsubscribe_grace,
            status_interval=s.status_interval, supervisor_status=self.supervisor.status, interest=self.interest,
            publisher=self.publisher,
        )

    def _interest(self, key: Any, count: int) -> None:
        if self.bridge is not None and key.startswith("market-data."):
            self.bridge.tell(InterestChanged(key, count))

    def stats(self) -> dict[str, Any]:
        if self.bridge is None:
            return {"initialized": False, "exchanges": {}, "subscriptions": 0, "activeSubscriptions": [],
                    "retrying": []}
        try:
            return self.bridge.ask(GetStats(), timeout=1.0)
        except Exception:  # noqa: BLE001 - the bridge is restarting: say so rather than fail /ws/stats
            return {"initialized": False, "exchanges": {}, "subscriptions": 0, "activeSubscriptions": [],
                    "retrying": []}

    def stop(self) -> None:
        if self.simulator is not None:
            self.simulator.stop()
