"""The harness the benchmark scripts share (scripts/bench_*.py), so each holds only what it
measures and reports.

- `stack`: the environment, the benchmark database, gunicorn and Celery workers, the broker,
  and `Stack`, which starts them for one run and stops them again (also on Ctrl-C);
- `cli`: the command-line options the scripts have in common;
- `events`: what the benchmarks send: the ingest endpoints' requests and the pipeline's mix of
  the three demo signals, in Python and as wrk Lua;
- `loadgen`: wrk with a generated Lua script, the Python fallback, the paced raw-socket client;
- `db`: polling the events table and the pipeline's integrity checks;
- `machine`: CPU and memory from /proc, the machine and the software versions;
- `stats`: percentiles, slopes and the lines every report opens with.

Only stdlib, psycopg and redis (both in requirements.txt); the scripts import it as `benchlib`
because Python puts their own directory, scripts/, first on the path.
"""
