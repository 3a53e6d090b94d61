"""``unimodel bench``: a load generator and meter for any OpenAI-compatible endpoint (a pure HTTP client).

It imports nothing of the server (``unimodel.server``, ``unimodel.engines``, ``unimodel.service``): it talks
HTTP to ours, to vLLM or to a hosted API alike. Layers, each importing only those above it:
``workload_data`` → ``workloads`` (what is sent), ``client`` (one timed streaming request), ``loadgen``
(closed loop, open loop, sweep levels), ``schema`` (``results.json``), ``metrics`` (the figures),
``runner`` (efforts × runs), ``markdown``/``plots``/``report`` (what is written), ``console`` (rich
progress and table), ``cli`` (the typer command).
"""
