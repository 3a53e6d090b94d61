"""``unimodel bench``: a load generator and meter for any OpenAI-compatible endpoint (a pure HTTP client).

It imports nothing of the server (``unimodel.server``, ``unimodel.engines``, ``unimodel.service``): it talks
HTTP to ours, to vLLM or to a hosted API alike. Layers, each importing only those above it:
``workload_data`` → ``workloads`` (what is sent, and which size flags each workload takes), ``client`` (one
timed streaming request), ``loadgen`` (closed loop, open loop, sweep levels), ``schema`` (``results.json``),
``metrics`` (the figures), ``failures`` (errors by kind), ``shape`` (what each kind of request really asks
for), ``preflight`` (the test request before the run, its failure as one line), ``runner`` (efforts × runs),
``markdown``/``plots``/``report`` (what is written), ``console`` (rich progress and tables), ``cli`` (the typer
command).
"""
