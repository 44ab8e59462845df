-- The whole state of the orchestrator. Enumerations are CHECKs on text so that the wire names,
-- the SQL names and the log lines agree; uniqueness keys carry the idempotency rules of DESIGN §2.

-- ---------------------------------------------------------------- catalog
CREATE TABLE catalog_projects (
    saved_project_id uuid PRIMARY KEY,
    owner_user_id    uuid NOT NULL,
    name             text NOT NULL,
    template_md5     text NOT NULL,
    template_url     text NOT NULL,
    ae_version       text NOT NULL,
    frame_rate       integer NOT NULL CHECK (frame_rate IN (24, 25, 30, 60)),
    total_frames     integer NOT NULL CHECK (total_frames > 0),
    duration_sec     double precision NOT NULL CHECK (duration_sec > 0),
    has_voiceover    boolean NOT NULL DEFAULT false,
    -- Bumped whenever the template changes: replicas and cached snapshots are per version.
    version          integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX catalog_projects_owner ON catalog_projects (owner_user_id);

CREATE TABLE catalog_scenes (
    saved_project_id uuid NOT NULL REFERENCES catalog_projects ON DELETE CASCADE,
    scene_key        text NOT NULL,
    start_frame      integer NOT NULL CHECK (start_frame >= 0),
    end_frame        integer NOT NULL,
    PRIMARY KEY (saved_project_id, scene_key),
    CHECK (end_frame >= start_frame)
);

-- ---------------------------------------------------------------- money
-- A lock row per account: balance checks and charges serialise on it (SELECT ... FOR UPDATE).
CREATE TABLE accounts (
    user_id    uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Append-only: the balance is the sum of the entries. Credits and refunds are positive,
-- charges negative.
CREATE TABLE ledger_entries (
    id           bigserial PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES accounts,
    kind         text NOT NULL CHECK (kind IN ('credit', 'charge', 'refund', 'extension')),
    amount_minor bigint NOT NULL,
    job_id       uuid,
    export_id    uuid,
    note         text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind IN ('credit', 'refund') AND amount_minor > 0)
        OR (kind IN ('charge', 'extension') AND amount_minor <= 0))
);
CREATE INDEX ledger_entries_user ON ledger_entries (user_id);
-- A job is charged once and refunded at most once (DESIGN §2.4).
CREATE UNIQUE INDEX ledger_one_charge_per_job ON ledger_entries (job_id) WHERE kind = 'charge';
CREATE UNIQUE INDEX ledger_one_refund_per_job ON ledger_entries (job_id) WHERE kind = 'refund';

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only';
END;
$$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only();

CREATE VIEW account_balances AS
    SELECT a.user_id, COALESCE(sum(l.amount_minor), 0)::bigint AS balance_minor
    FROM accounts a LEFT JOIN ledger_entries l ON l.user_id = a.user_id
    GROUP BY a.user_id;

-- A discount code applies once per user and code.
CREATE TABLE discount_redemptions (
    user_id     uuid NOT NULL,
    code        text NOT NULL,
    job_id      uuid NOT NULL,
    redeemed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, code)
);

-- ---------------------------------------------------------------- nodes
CREATE TABLE nodes (
    id                    uuid PRIMARY KEY,
    name                  text NOT NULL UNIQUE,
    region                text NOT NULL,
    node_ip               text NOT NULL,
    worker_port           integer NOT NULL CHECK (worker_port BETWEEN 1 AND 65535),
    status                text NOT NULL DEFAULT 'Offline' CHECK (status IN
                              ('Offline', 'Idle', 'Busy', 'Maintenance', 'Quarantined', 'Updating')),
    node_kind             text NOT NULL DEFAULT 'Shared',
    owner_user_id         uuid,
    current_ae_version    text NOT NULL,
    available_ae_versions text[] NOT NULL DEFAULT '{}',
    node_agent_version    text NOT NULL DEFAULT '',
    ram_gb                integer NOT NULL DEFAULT 0 CHECK (ram_gb >= 0),
    cpu_cores             integer NOT NULL DEFAULT 0 CHECK (cpu_cores >= 0),
    priority              integer NOT NULL DEFAULT 0,
    is_active             boolean NOT NULL DEFAULT true,
    accepts_new_jobs      boolean NOT NULL DEFAULT true,
    last_heartbeat_at     timestamptz,
    current_job_id        uuid,
    last_cpu_pct          integer NOT NULL DEFAULT 0,
    last_ram_available_mb integer NOT NULL DEFAULT 0,
    ae_running            boolean NOT NULL DEFAULT false,
    cache_used_gb         integer NOT NULL DEFAULT 0,
    cached_template_md5s  text[] NOT NULL DEFAULT '{}',
    lifetime_task_count   bigint NOT NULL DEFAULT 0,
    lifetime_crash_count  integer NOT NULL DEFAULT 0,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    last_maintenance_at   timestamptz,
    next_maintenance_at   timestamptz,
    maintenance_reason    text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX nodes_region_status ON nodes (region, status);

-- Heartbeat samples, written in batches (COPY) by the health writer; no key, append-only.
CREATE TABLE node_health_samples (
    node_id          uuid NOT NULL REFERENCES nodes ON DELETE CASCADE,
    recorded_at      timestamptz NOT NULL,
    status           text NOT NULL,
    cpu_pct          integer NOT NULL,
    ram_available_mb integer NOT NULL,
    ae_running       boolean NOT NULL,
    current_job_id   uuid,
    current_frame    integer,
    cache_used_gb    integer NOT NULL,
    -- Samples older than the retention are thinned to one per bucket by the Reaper.
    downsampled      boolean NOT NULL DEFAULT false
);
CREATE INDEX node_health_samples_node_time ON node_health_samples (node_id, recorded_at DESC);

-- Commands waiting for a node: delivered in every heartbeat answer until acknowledged.
CREATE TABLE node_commands (
    id         uuid PRIMARY KEY,
    node_id    uuid NOT NULL REFERENCES nodes ON DELETE CASCADE,
    type       text NOT NULL CHECK (type IN ('PrepareReplica', 'RenderFrames', 'TrimRange',
                   'CancelRender', 'CloseAE', 'Restart', 'Release', 'UpdateSoftware')),
    payload    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    acked_at   timestamptz
);
CREATE INDEX node_commands_pending ON node_commands (node_id, created_at) WHERE acked_at IS NULL;

CREATE TABLE node_updates (
    id                uuid PRIMARY KEY,
    update_number     integer NOT NULL UNIQUE,
    update_file_name  text NOT NULL,
    storage_key       text NOT NULL,
    sha256            text NOT NULL,
    size_bytes        bigint NOT NULL CHECK (size_bytes >= 0),
    description       text NOT NULL DEFAULT '',
    target_ae_version text NOT NULL,
    in_update_queue   boolean NOT NULL DEFAULT false,
    -- Set when a staged rollout stopped by itself (crash rate of updated nodes rose).
    halted_reason     text,
    create_date       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE node_update_rollouts (
    update_id    uuid NOT NULL REFERENCES node_updates ON DELETE CASCADE,
    node_id      uuid NOT NULL REFERENCES nodes ON DELETE CASCADE,
    status       text NOT NULL DEFAULT 'Queued'
                     CHECK (status IN ('Queued', 'Sent', 'Confirmed', 'Failed', 'Halted')),
    queued_at    timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    confirmed_at timestamptz,
    PRIMARY KEY (update_id, node_id)
);

-- ---------------------------------------------------------------- jobs
CREATE TABLE render_jobs (
    id                 uuid PRIMARY KEY,
    user_id            uuid NOT NULL,
    kind               text NOT NULL DEFAULT 'Render' CHECK (kind IN ('Render', 'Snapshot')),
    saved_project_id   uuid NOT NULL REFERENCES catalog_projects,
    project_version    integer NOT NULL,
    name               text NOT NULL,
    step               text NOT NULL DEFAULT 'Queued' CHECK (step IN
                           ('Queued', 'Preparing', 'Rendering', 'Merging',
                            'Completed', 'Failed', 'Cancelled')),
    render_progress    integer NOT NULL DEFAULT 0 CHECK (render_progress BETWEEN 0 AND 100),
    priority_queue     text NOT NULL,
    price_type         text NOT NULL CHECK (price_type IN
                           ('Free', 'Preview', 'Cash', 'Plan', 'Snapshot', 'Reseller')),
    paid_price_minor   bigint NOT NULL DEFAULT 0 CHECK (paid_price_minor >= 0),
    quality            text NOT NULL CHECK (quality IN ('Low', 'Medium', 'High', 'Full', 'Lossless')),
    resolution         text NOT NULL CHECK (resolution IN ('HD', 'FullHD', 'TwoK', 'FourK')),
    frame_rate         integer NOT NULL CHECK (frame_rate IN (24, 25, 30, 60)),
    duration_sec       double precision NOT NULL,
    has_voiceover      boolean NOT NULL DEFAULT false,
    start_frame        integer NOT NULL DEFAULT 0,
    end_frame          integer NOT NULL,
    output_format      text NOT NULL DEFAULT 'mp4' CHECK (output_format IN ('mp4', 'png')),
    image_preview_b64  text,
    failed_message     text,
    export_id          uuid,
    discount_code      text,
    support_flatrender boolean NOT NULL DEFAULT false,
    tell_me_when_done  boolean NOT NULL DEFAULT false,
    preferred_region   text,
    retry_of_job_id    uuid REFERENCES render_jobs,
    retry_count        integer NOT NULL DEFAULT 0,
    repair_attempts    integer NOT NULL DEFAULT 0,
    replica_key        text,
    cancel_reason      text,
    queued_at          timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    completed_at       timestamptz,
    -- Compare-and-set counter for step changes.
    revision           integer NOT NULL DEFAULT 0,
    CHECK (end_frame >= start_frame)
);
CREATE INDEX render_jobs_user_queued ON render_jobs (user_id, queued_at DESC);
CREATE INDEX render_jobs_active ON render_jobs (step)
    WHERE step NOT IN ('Completed', 'Failed', 'Cancelled');

CREATE TABLE replicas (
    saved_project_id uuid NOT NULL REFERENCES catalog_projects ON DELETE CASCADE,
    project_version  integer NOT NULL,
    storage_key      text NOT NULL,
    md5              text,
    built_by_node_id uuid REFERENCES nodes ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saved_project_id, project_version)
);

CREATE TABLE frame_jobs (
    id               uuid PRIMARY KEY,
    job_id           uuid NOT NULL REFERENCES render_jobs ON DELETE CASCADE,
    node_id          uuid REFERENCES nodes ON DELETE SET NULL,
    start_frame      integer NOT NULL,
    end_frame        integer NOT NULL,
    order_value      integer NOT NULL,
    status           text NOT NULL DEFAULT 'Pending' CHECK (status IN
                         ('Pending', 'Assigned', 'Rendering', 'Rendered', 'Validated', 'Failed')),
    frames_rendered  integer NOT NULL DEFAULT 0 CHECK (frames_rendered >= 0),
    frames_validated integer NOT NULL DEFAULT 0 CHECK (frames_validated >= 0),
    attempt          integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    last_error       text,
    output_key       text,
    -- The range this one replaces (requeued after a dead node or a failed validation).
    replaces_id      uuid REFERENCES frame_jobs,
    created_at       timestamptz NOT NULL DEFAULT now(),
    assigned_at      timestamptz,
    rendered_at      timestamptz,
    validated_at     timestamptz,
    CHECK (end_frame >= start_frame)
);
CREATE INDEX frame_jobs_job ON frame_jobs (job_id, order_value);
CREATE INDEX frame_jobs_node_open ON frame_jobs (node_id)
    WHERE status IN ('Assigned', 'Rendering', 'Rendered');

-- One row per reported frame: a report sent twice is the same row (DESIGN §2.3).
CREATE TABLE frame_reports (
    frame_job_id    uuid NOT NULL REFERENCES frame_jobs ON DELETE CASCADE,
    frame_number    integer NOT NULL,
    node_id         uuid NOT NULL,
    file_size_bytes bigint,
    completed_at    timestamptz,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (frame_job_id, frame_number)
);

CREATE TABLE job_logs (
    id        bigserial PRIMARY KEY,
    job_id    uuid NOT NULL REFERENCES render_jobs ON DELETE CASCADE,
    timestamp timestamptz NOT NULL DEFAULT now(),
    level     text NOT NULL CHECK (level IN ('debug', 'info', 'warn', 'error')),
    node_id   uuid,
    message   text NOT NULL,
    meta      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX job_logs_job ON job_logs (job_id, id);

CREATE TABLE node_crashes (
    id               uuid PRIMARY KEY,
    node_id          uuid NOT NULL REFERENCES nodes ON DELETE CASCADE,
    render_job_id    uuid REFERENCES render_jobs ON DELETE SET NULL,
    frame_job_id     uuid REFERENCES frame_jobs ON DELETE SET NULL,
    crashed_at       timestamptz NOT NULL DEFAULT now(),
    last_known_frame integer,
    crash_signal     text NOT NULL DEFAULT '',
    ae_version       text NOT NULL DEFAULT '',
    error_log        text NOT NULL DEFAULT '',
    log_file_url     text NOT NULL DEFAULT '',
    auto_recovered   boolean NOT NULL DEFAULT false,
    recovery_action  text NOT NULL DEFAULT '',
    reassigned_to_node_id uuid,
    recovered_at     timestamptz
);
-- A crash report sent twice is one crash (DESIGN §2.3).
CREATE UNIQUE INDEX node_crashes_idempotent
    ON node_crashes (node_id, frame_job_id, last_known_frame) NULLS NOT DISTINCT;
CREATE INDEX node_crashes_node_time ON node_crashes (node_id, crashed_at DESC);

-- ---------------------------------------------------------------- exports and snapshots
CREATE TABLE exports (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL,
    job_id           uuid UNIQUE REFERENCES render_jobs ON DELETE SET NULL,
    saved_project_id uuid NOT NULL,
    path             text NOT NULL,
    image            text NOT NULL,
    size_bytes       bigint NOT NULL CHECK (size_bytes >= 0),
    duration_sec     double precision NOT NULL,
    width            integer NOT NULL,
    height           integer NOT NULL,
    file_extension   text NOT NULL,
    file_type        text NOT NULL,
    render_quality   text NOT NULL,
    create_type      text NOT NULL,
    produce_date     timestamptz NOT NULL DEFAULT now(),
    auto_delete_date timestamptz NOT NULL
);
CREATE INDEX exports_user_produced ON exports (user_id, produce_date DESC);
CREATE INDEX exports_expiry ON exports (auto_delete_date);

ALTER TABLE render_jobs ADD CONSTRAINT render_jobs_export_fk
    FOREIGN KEY (export_id) REFERENCES exports ON DELETE SET NULL;

CREATE TABLE export_files (
    id         uuid PRIMARY KEY,
    export_id  uuid NOT NULL REFERENCES exports ON DELETE CASCADE,
    path       text NOT NULL,
    thumbnail  text NOT NULL DEFAULT '',
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    file_type  text NOT NULL,
    UNIQUE (export_id, file_type)
);

CREATE TABLE snapshots (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL,
    saved_project_id uuid NOT NULL REFERENCES catalog_projects ON DELETE CASCADE,
    project_version  integer NOT NULL,
    scene_key        text NOT NULL,
    frame_number     integer NOT NULL CHECK (frame_number >= 0),
    status           text NOT NULL DEFAULT 'Pending'
                         CHECK (status IN ('Pending', 'Rendering', 'Cached', 'Failed')),
    job_id           uuid REFERENCES render_jobs ON DELETE SET NULL,
    image_key        text,
    thumbnail_key    text,
    width            integer,
    height           integer,
    duration_ms      integer,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    expires_at       timestamptz NOT NULL
);
-- One live render or cached image per (project version, scene, frame): concurrent requests share it.
CREATE UNIQUE INDEX snapshots_one_per_frame
    ON snapshots (saved_project_id, project_version, scene_key, frame_number)
    WHERE status IN ('Pending', 'Rendering', 'Cached');
CREATE INDEX snapshots_expiry ON snapshots (expires_at);

-- ---------------------------------------------------------------- notifications
-- Outbox: written in the transaction that ends the job, delivered to the webhook with retries.
CREATE TABLE notification_outbox (
    id              bigserial PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES render_jobs ON DELETE CASCADE,
    user_id         uuid NOT NULL,
    event           text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text,
    UNIQUE (job_id, event)
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at)
    WHERE delivered_at IS NULL;
