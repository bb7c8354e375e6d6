"""Check the synced airdrops in the data database: the example command job.

Works offline and on an empty database; prints one line, exits non-zero if
rows are malformed, so cron mails only when something is wrong.
"""

import argparse
import os
import sqlite3
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--db", default=os.environ.get("SCHEDSYNC_DATA", "data.db"))
parser.add_argument("--batch", type=int, default=50)
args = parser.parse_args()

if not os.path.exists(args.db):
    print(f"validate: {args.db} does not exist yet (run the sync jobs first); nothing to check")
    sys.exit(0)
db = sqlite3.connect(args.db)
tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
if "airdrops" not in tables:
    print("validate: no airdrops table yet; nothing to check")
    sys.exit(0)
columns = {row[1] for row in db.execute("PRAGMA table_info(airdrops)")}
name = "name" if "name" in columns else "id"
bad = db.execute(f"SELECT id FROM airdrops WHERE {name} IS NULL OR {name} = '' LIMIT ?",
                 (args.batch,)).fetchall()
total = db.execute("SELECT COUNT(*) FROM airdrops").fetchone()[0]
print(f"validate: {total} airdrops, {len(bad)} without a name")
sys.exit(1 if bad else 0)
