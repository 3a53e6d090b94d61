"""``unimodel eval``: measure what reasoning effort buys, over HTTP, on tasks whose answers are known.

A pure client: it talks to any OpenAI-compatible endpoint (unimodel, vLLM, a hosted API) with httpx and
imports nothing of the server (``unimodel.server``, ``unimodel.engines``, ``unimodel.service``); a test
checks that.

- ``tasks/``: one module per suite, each generating seeded tasks with known answers and checking a reply;
- ``extract.py``: how an answer is found in a reply (documented rules, shared by the suites);
- ``sandbox.py``: runs candidate code and its tests in a limited subprocess;
- ``requirements.py``: what a suite needs of the endpoint (images, tools, a JSON schema), checked with one
  request per such suite before the run;
- ``profiles.py``: the quick run (the default) and the full one: tasks per suite, ``max_tokens`` per effort;
- ``runner.py``: sends one streamed request per task per effort, measures tokens, latency and TTFT;
- ``scoring.py``: accuracy with a Wilson interval, token figures, the A/B verdict (McNemar's exact test);
- ``failures.py``: the failed requests by effort and type, with a sample message;
- ``results.py`` / ``report.py`` / ``console.py`` / ``plots.py``: ``results.json``, the Markdown report, the
  terminal's view (and the progress bar with its ETA), PNGs;
- ``cli.py``: the ``unimodel eval`` command.
"""
