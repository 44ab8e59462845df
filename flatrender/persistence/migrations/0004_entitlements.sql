-- Entitlements (DESIGN §5): the price types besides Cash a user may submit renders with, set
-- by a service. Read under the account's row lock by the submit that depends on them.
ALTER TABLE accounts ADD COLUMN entitlements text[] NOT NULL DEFAULT '{}'
    CHECK (entitlements <@ ARRAY['Plan', 'Reseller', 'Preview', 'Free']::text[]);

-- The per-user cap on live snapshot jobs ([snapshots] max_live_per_user) counts these.
CREATE INDEX render_jobs_live_snapshots ON render_jobs (user_id)
    WHERE kind = 'Snapshot' AND step NOT IN ('Completed', 'Failed', 'Cancelled');
