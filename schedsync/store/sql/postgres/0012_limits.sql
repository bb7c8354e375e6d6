-- overlap: replace across hosts: a new run asks the holder of a job's lease to stop by
-- writing on its lease row; the holder's heartbeat (the renewal, every second) reads it
-- back and stops its own job. A lease taken anew starts without one.
ALTER TABLE schedsync.leases ADD COLUMN stop text;

UPDATE schedsync.meta SET version = 12;
