"""A throwaway deployment on one machine, for fault-injection tests and benchmarks.

``PgCluster`` is a PostgreSQL server of its own in a temporary directory, so that a test can
kill it, restart it and cut its connections without touching anybody else's server.
``ProcessGroup`` spawns openbuda processes (``serve --no-workers``, ``worker``, anything) with
their logs in files, waits until each is ready, and can ``kill9`` and restart them: each process
has its own ``OPENBUDA_HOME``, standing for a machine of its own.

Both clean up after themselves, always: their ``close``/``stop`` run from fixtures' finalizers
and, as a last resort, at interpreter exit. They only ever signal processes they started
(each spawned process leads a session of its own, and only that process group is signalled).

::

    with PgCluster.start(base_dir) as pg, ProcessGroup(base_dir / "procs", env) as group:
        env["OPENBUDA_DATABASE_URL"] = pg.url
        api = group.api("api", port=free_port())
        worker = group.worker("w1", ready=pg.registered())
        worker.kill9()
        worker.start()
        pg.terminate("openbuda worker w1%")
        pg.restart()

Everything here is synchronous (``subprocess``): async callers run it in a thread
(``anyio.to_thread.run_sync``).
"""

from __future__ import annotations

from openbuda.testing._pg_cluster import ClusterUnavailable, PgCluster, ShutdownMode
from openbuda.testing._processes import (
    OpenbudaProcess,
    ProcessExited,
    ProcessGroup,
    ReadyProbe,
    child_environment,
    free_port,
    health_probe,
    log_probe,
)

__all__ = [
    "ClusterUnavailable",
    "OpenbudaProcess",
    "PgCluster",
    "ProcessExited",
    "ProcessGroup",
    "ReadyProbe",
    "ShutdownMode",
    "child_environment",
    "free_port",
    "health_probe",
    "log_probe",
]
