"""The OLD worker's algorithm (the reference's baseline), for bench/worker.py only.

Per poll: release every RUNNING job whose lock passed (every worker, every
poll), find the oldest due PENDING job, claim it with a second conditional
update on (id, PENDING, attempts), run it, complete it without checking the
lock. Sleeps the 1 s poll interval when nothing was claimed.

    python bench/old_worker.py MONGODB_URL
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import sys
import time

from pymongo import MongoClient

POLL_S = 1.0
LOCK = dt.timedelta(minutes=5)
stop = False


def _stop(*_: object) -> None:
    global stop
    stop = True


def main(url: str) -> None:
    signal.signal(signal.SIGTERM, _stop)
    jobs = MongoClient(url).get_default_database()["Job"]
    me = f"old-{os.getpid()}"
    print("ready", flush=True)
    while not stop:
        now = dt.datetime.now(dt.UTC)
        jobs.update_many({"status": "RUNNING", "lockedUntil": {"$lt": now}},
                         {"$set": {"status": "PENDING", "lockedBy": None, "lockedUntil": None}})
        candidate = jobs.find_one({"status": "PENDING", "availableAt": {"$lte": now}},
                                  sort=[("availableAt", 1), ("createdAt", 1)])
        if candidate is None:
            time.sleep(POLL_S)
            continue
        claimed = jobs.update_one(
            {"_id": candidate["_id"], "status": "PENDING", "attempts": candidate["attempts"]},
            {"$set": {"status": "RUNNING", "lockedBy": me, "lockedAt": now, "lockedUntil": now + LOCK},
             "$inc": {"attempts": 1}})
        if claimed.modified_count != 1:
            continue
        digest = hashlib.sha256(json.dumps(candidate["payload"], sort_keys=True).encode()).hexdigest()
        jobs.update_one({"_id": candidate["_id"]},
                        {"$set": {"status": "DONE", "result": {"digest": digest}, "lockedBy": None,
                                  "lockedUntil": None, "updatedAt": dt.datetime.now(dt.UTC)}})


if __name__ == "__main__":
    main(sys.argv[1])
