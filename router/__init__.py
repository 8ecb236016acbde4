"""pennyroute: route batch LLM work to the cheapest model that meets its bar, and ledger every cent.

The map. One folder per stage of the data path, submit -> queue -> worker -> provider -> ledger ->
report; imports flow one way, down this list (tests/unit/test_layout.py checks it):

    cli/, api/    shells: parse input, call jobs/ and reports/, show the answer; no rules of their own
                  (api/: `pennyroute serve`, tenant keys, the jobs API, OpenAI Batch-compatible /v1, /metrics)
    jobs/         intake (read and check a JSONL file), submit (load, route, commit), estimates (stored
                  quality), calibrate (measure models on the job's own items), lifecycle (start, calibrate
                  then run, pause, resume, cancel: every rule about what follows what), dispatch (the one
                  seam: Celery or in-process), results (what a job is and gave), sweeper (lost messages),
                  openai_batches (OpenAI Batch files as jobs: validate, split per model, output lines)
    engine/       a worker's work: chunk (claim a range of items and run it), batch (plan, reserve the
                  worst case, record call rows before the calls), rounds (call, parse, retry, escalate),
                  settle (write outcomes, rollups, settlement; charge lost calls), calls (the gate,
                  shared limits, breakers), drift, alerts (soft-limit webhook), runtime (the I/O loop);
                  batch mode, on the providers' batch APIs: batch_mode (the picture; poll, cancel),
                  batch_submit (what goes to batch, a wave's rows, create), batch_ingest (settle a
                  wave exactly once, then a next batch or sync)
    providers/    one module per vendor over one HTTP client builder (http.py); limits (shared rate
                  limits and breakers in Redis); sandbox (the simulated provider of the demo, and its
                  simulated batch API); batch_api (the seam to a vendor's batch API) and <vendor>_batch
                  beside each vendor module, over batch_http; registry; openai_usage (OpenAI's usage
                  and costs exports, for reconcile)
    ledger/       tables, repo (every query), sums (report sums), rollup, budgets (reservations), db,
                  keys (API keys), batches (/v1 files and batches), figures (/metrics sums)
    reports/      monthly (the month's report from the rollups), render (table, csv, json, html; money),
                  reconcile (the ledger against a provider's usage export, per UTC day and model)
    ground floor  settings, errors (the tree), usage (TokenUsage), catalog (models, prices), prompts, chat
                  (a chat item: a conversation sent as given),
                  route (a job's route as data), candidates (the catalog as routing candidates)
    policies/     (beside router/) pure decisions: frozen values in, a decision with its reasons out

Reading order for a newcomer: policies/types.py and policies/cheapest_qualifying.py (what a decision
is), router/route.py, router/jobs/submit.py, router/jobs/lifecycle.py, router/engine/chunk.py, batch.py,
rounds.py and settle.py (exactly-once money), router/ledger/repo.py, then workers/tasks.py; for batch
mode, policies/execution_mode.py, then router/engine/batch_mode.py.
"""
