"""The upstream pool's gauges, read at scrape time from ``Engine.pool_status()`` (nothing for an engine that is
no pool):

* ``unimodel_pool_saturation`` — the pool's saturation for an autoscaler (KEDA scales the vLLM replicas on
  it, ``deploy/``): the mean over its active, ready replicas of each one's saturation (its queue against
  ``--pool-max-waiting``, its KV use against ``--pool-max-kv-usage``; 1 when its metrics are stale), plus the
  requests waiting at the gateway against the room the replicas have. Below 1 there is room; above, requests
  wait;
* ``unimodel_pool_replicas`` by ``state`` (``active``, ``draining``, ``gone``) and ``unimodel_pool_replicas_ready``;
* ``unimodel_pool_queue_depth`` (requests waiting at the gateway), ``unimodel_pool_queue_timeouts_total``,
  ``unimodel_pool_queue_refused_total``;
* per replica (label ``replica``, its host:port: bounded by the pool's size): ``unimodel_pool_replica_waiting``,
  ``_running``, ``_kv_usage`` (as its last ``/metrics`` read said), ``_inflight`` (this gateway's requests),
  ``_saturation``, ``_up`` (usable: active, answering, breaker not open), ``unimodel_pool_replica_requests_total``;
* ``unimodel_pool_choices_total`` by ``reason`` (``prefix``, ``session``, ``load``, ``only``, ``round_robin``,
  ``queued``, ``failover``): why requests went where they went.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

STATES = ("active", "draining", "gone")


def pool_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    replicas: dict[str, dict[str, Any]] = status["replicas"]
    queue: dict[str, int] = status["queue"]
    yield GaugeMetricFamily("unimodel_pool_saturation", "The pool's mean replica saturation plus its gateway "
                            "queue (0: idle, 1: full; the autoscaling signal).", value=status["saturation"])
    states = GaugeMetricFamily("unimodel_pool_replicas", "Replicas of the upstream pool by state.", labels=["state"])
    for state in STATES:
        states.add_metric([state], sum(1 for r in replicas.values() if r["state"] == state))
    yield states
    yield GaugeMetricFamily("unimodel_pool_replicas_ready", "Replicas that would take a request now.",
                            value=sum(1 for r in replicas.values() if _up(r)))
    yield GaugeMetricFamily("unimodel_pool_queue_depth", "Requests waiting at the gateway for a replica with room.",
                            value=queue["waiting"])
    yield CounterMetricFamily("unimodel_pool_queue_timeouts", "Requests that waited for a replica in vain.",
                              value=queue["timed_out"])
    yield CounterMetricFamily("unimodel_pool_queue_refused", "Requests refused because the gateway's queue "
                              "was full.", value=queue["refused"])
    gauges = {
        "waiting": GaugeMetricFamily("unimodel_pool_replica_waiting", "Requests in the replica's own queue "
                                     "(its last /metrics).", labels=["replica"]),
        "running": GaugeMetricFamily("unimodel_pool_replica_running", "Requests the replica is running "
                                     "(its last /metrics).", labels=["replica"]),
        "kv_usage": GaugeMetricFamily("unimodel_pool_replica_kv_usage", "The replica's KV cache in use, 0 to 1.",
                                      labels=["replica"]),
        "inflight": GaugeMetricFamily("unimodel_pool_replica_inflight", "This gateway's requests in flight on "
                                      "the replica.", labels=["replica"]),
        "saturation": GaugeMetricFamily("unimodel_pool_replica_saturation", "The replica's saturation (1: full "
                                        "or its metrics stale).", labels=["replica"]),
    }
    up = GaugeMetricFamily("unimodel_pool_replica_up", "1 when the replica would take a request now.",
                           labels=["replica"])
    served = CounterMetricFamily("unimodel_pool_replica_requests", "Requests sent to the replica.",
                                 labels=["replica"])
    for name, replica in replicas.items():
        for key, family in gauges.items():
            value = replica.get(key)
            if value is not None:
                family.add_metric([name], float(value))
        up.add_metric([name], 1.0 if _up(replica) else 0.0)
        served.add_metric([name], replica["served"])
    yield from gauges.values()
    yield up
    yield served
    choices = CounterMetricFamily("unimodel_pool_choices", "Why requests went to the replica they went to.",
                                  labels=["reason"])
    for reason, count in status["choices"].items():
        choices.add_metric([reason], count)
    yield choices


def _up(replica: dict[str, Any]) -> bool:
    return bool(replica["state"] == "active" and replica["ready"] and replica["breaker"] != "open")
