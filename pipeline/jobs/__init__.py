"""Jobs: one clustering run from a Zarr input to a Zarr output, on a Dask cluster.

::

    spec        the YAML workflow spec (input, output, parameters, cluster, schedule)
    workflow    a spec (and command-line options) → one job
    job         the job itself: input → cluster → engine → output and report
    cluster     which Dask cluster a job runs on (embedded, standing, TLS)
    schedule    specs run on their cron schedule, with a run history
"""
