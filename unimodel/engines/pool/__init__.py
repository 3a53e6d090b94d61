"""The upstream pool: many replicas of one model (vLLM servers, usually) behind one engine.

``engine.py`` is the engine (choosing, failover before the first token, drain, the operators' view);
``members.py`` keeps the replicas (discovery, start, the metrics loop, close); ``discovery.py`` finds them
(static URLs, DNS A/AAAA and SRV, Kubernetes EndpointSlices); ``replica.py`` is one replica's state and load;
``load.py`` reads vLLM's ``/metrics``; ``prefix.py`` keeps which replica saw which prompt prefix and session;
``choose.py`` scores the replicas; ``admission.py`` is the gateway's queue in front of a saturated pool
(priority classes, fair between tenants).
"""
