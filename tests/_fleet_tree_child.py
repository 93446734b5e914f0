"""A tree in a fleet, in a process of its own (so a test can SIGSTOP it whole), with one worker.

    python tests/_fleet_tree_child.py ROOT URL STATE_DIR HOST_ID

Prints one JSON line {"name": ..., "pid": ...} whenever its worker runs under a new name
or pid; stops (tree and worker) when its stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])

from loguru import logger  # noqa: E402

from actors import start_tree  # noqa: E402
from actors.workers._worker_process import WorkerProcess  # noqa: E402
from supervision import ChildSpec  # noqa: E402

logger.remove()
logger.add(sys.stderr, level="INFO")
url, state_dir, host_id = sys.argv[2:5]
tree = start_tree(state_dir, fleet=url, host_id=host_id, host_lease=3.0, fleet_timeout=0.5, reap_interval=0.5)
sleeper = [sys.executable, "-c", "import time; time.sleep(3600)"]
spec = ChildSpec("w", WorkerProcess, kwargs={"argv": sleeper, "names": tree.names, "term_timeout": 0.5})
tree.workers.proxy().start_child(spec).get(timeout=10)
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
last = None
while not done.is_set():
    try:
        (info,) = tree.workers.proxy().which_children().get(timeout=5)
        details = info.ref.proxy().info().get(timeout=5) if info.ref is not None else {}
    except Exception:
        details = {}
    now = (details.get("name"), details.get("pid"))
    if details.get("state") == "running" and now != last:
        last = now
        print(json.dumps({"name": now[0], "pid": now[1]}), flush=True)
    time.sleep(0.05)  # polling what the test reads, not synchronisation
tree.stop()
