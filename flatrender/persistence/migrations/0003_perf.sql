-- The scheduler's look-up of Pending ranges: frame_jobs keeps every finished range forever, so
-- the Pending ones are found through their own small index instead of a scan of the table.
CREATE INDEX frame_jobs_pending ON frame_jobs (job_id, order_value) WHERE status = 'Pending';
