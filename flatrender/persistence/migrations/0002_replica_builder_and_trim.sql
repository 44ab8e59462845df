-- The node building a job's replica while the job is Preparing, so a restarted daemon knows
-- which node's replica-ready to accept (and whom to ask again if that node is lost).
ALTER TABLE render_jobs ADD COLUMN replica_node_id uuid REFERENCES nodes ON DELETE SET NULL;

-- A range whose unstarted tail went to a late idle node (TrimRange): its end before the trim
-- and the tail's id, so a restarted daemon still recognises a holder that trimmed too late.
ALTER TABLE frame_jobs ADD COLUMN trim_original_end integer, ADD COLUMN trim_tail_id uuid;

-- A Failed job is retried at most once: two simultaneous retries cannot both be charged.
CREATE UNIQUE INDEX render_jobs_one_retry ON render_jobs (retry_of_job_id)
    WHERE retry_of_job_id IS NOT NULL;
