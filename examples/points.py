"""The example python job: the daily points leaderboard, with a derived column.

jobs.yaml runs it as ``python: "examples.points:points"``; the folder of jobs.yaml
is on the import path. ``ctx.http`` spends the job's budget and retries like an
http job; ``ctx.db`` is the data database (sqlite-utils).
"""

import os
import time


def points(ctx) -> int:
    api = os.environ.get("DEMO_API", "http://127.0.0.1:8765")
    headers = {"Authorization": f"Bearer {os.environ.get('POINTS_TOKEN', 'demo-token')}"}
    table = ctx.db["points"]
    synced_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    page = 1
    while True:
        response = ctx.http.get(f"{api}/v1/points/leaderboard", params={"page": page},
                                headers=headers)
        response.raise_for_status()
        wallets = response.json()["wallets"]
        if not wallets:
            break
        rows = [{**w, "effective": round(w["points"] * w["multiplier"]), "synced_at": synced_at}
                for w in wallets]
        table.upsert_all(rows, pk="wallet", alter=True)
        ctx.progress(len(rows))
        page += 1
    ctx.log.info("leaderboard: %d wallets over %d pages", ctx.processed, page - 1)
    return ctx.processed
