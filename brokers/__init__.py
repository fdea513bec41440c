"""Where publications go between gateway processes: in memory, or through Redis.

``brokers/broker.py`` defines the boundary; ``memory.py`` is the default
(one process, nothing to install), ``redis_broker.py`` lets any number of
gateway processes serve clients together.
"""

from brokers.broker import Broker, BrokerUnavailable, Publication

__all__ = ["Broker", "BrokerUnavailable", "Publication"]
