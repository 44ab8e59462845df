-- The node building a job's replica while the job is Preparing, so a restarted daemon knows
-- which node's replica-ready to accept (and whom to ask again if that node is lost).
ALTER TABLE render_jobs ADD COLUMN replica_node_id uuid REFERENCES nodes ON DELETE SET NULL;
