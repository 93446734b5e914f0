"""Worker processes under supervision: one OS process per actor, its name, its restarts.

    from actors.workers import WorkerProcess

    spec = ChildSpec("w1", WorkerProcess, kwargs={"argv": ["python", "worker.py"], "names": tree.names})
    tree.supervisor.proxy().start_child(spec).get(timeout=5)
"""

from actors.workers._worker_process import Backoff, WorkerExited, WorkerProcess, inherit_identity

__all__ = ["Backoff", "WorkerExited", "WorkerProcess", "inherit_identity"]
