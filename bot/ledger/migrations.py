"""Numbered schema migrations, applied in order at start-up; ``PRAGMA user_version`` records them.

Usage counters are maintained by triggers on ``jobs``, so the counters a quota check reads can
never disagree with the jobs they summarise: the same statement changes both.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the whole first schema.
    """
    CREATE TABLE guild_settings (
        guild_id TEXT PRIMARY KEY,
        daily_micro_usd INTEGER,
        user_daily_images INTEGER,
        user_daily_micro_usd INTEGER,
        blocklist TEXT NOT NULL DEFAULT '[]',
        updated_at TEXT NOT NULL
    );

    CREATE TABLE user_quotas (
        guild_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        daily_images INTEGER,
        daily_micro_usd INTEGER,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (guild_id, user_id)
    );

    -- One row per request that can cost money: its reservation, its state and its charge.
    -- images/micro_usd/milli_neurons hold the reserved estimate until settled, then the
    -- actual charge; a refunded job counts as nothing.
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        idempotency_key TEXT UNIQUE,
        kind TEXT NOT NULL CHECK (kind IN ('generate', 'enhance', 'upload')),
        user_id TEXT NOT NULL,
        guild_id TEXT NOT NULL DEFAULT '',
        day TEXT NOT NULL,
        model TEXT,
        state TEXT NOT NULL CHECK (state IN
            ('reserved', 'generating', 'storing', 'settled', 'refunded')),
        images INTEGER NOT NULL DEFAULT 0,
        micro_usd INTEGER NOT NULL DEFAULT 0,
        milli_neurons INTEGER NOT NULL DEFAULT 0,
        planned_image_ids TEXT NOT NULL DEFAULT '[]',
        params TEXT NOT NULL DEFAULT '{}',
        error_code TEXT,
        error_message TEXT,
        note TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX jobs_open ON jobs (state) WHERE state IN ('reserved', 'generating', 'storing');
    CREATE INDEX jobs_user_day ON jobs (user_id, day);
    CREATE INDEX jobs_guild_day ON jobs (guild_id, day);
    CREATE INDEX jobs_day ON jobs (day);

    -- Counters per UTC day: 'user' rows are per server and user ('<guild>:<user>'; guild ''
    -- outside a server), 'guild' rows per server, and one 'all' row for the whole bot.
    CREATE TABLE usage_counters (
        day TEXT NOT NULL,
        scope TEXT NOT NULL CHECK (scope IN ('user', 'guild', 'all')),
        scope_id TEXT NOT NULL,
        images INTEGER NOT NULL DEFAULT 0,
        micro_usd INTEGER NOT NULL DEFAULT 0,
        milli_neurons INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, scope, scope_id)
    ) WITHOUT ROWID;

    CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs WHEN NEW.state != 'refunded'
    BEGIN
        INSERT INTO usage_counters (day, scope, scope_id, images, micro_usd, milli_neurons)
        VALUES (NEW.day, 'user', NEW.guild_id || ':' || NEW.user_id, NEW.images, NEW.micro_usd,
                NEW.milli_neurons)
        ON CONFLICT DO UPDATE SET images = images + excluded.images,
            micro_usd = micro_usd + excluded.micro_usd,
            milli_neurons = milli_neurons + excluded.milli_neurons;
        INSERT INTO usage_counters (day, scope, scope_id, images, micro_usd, milli_neurons)
        SELECT NEW.day, 'guild', NEW.guild_id, NEW.images, NEW.micro_usd, NEW.milli_neurons
        WHERE NEW.guild_id != ''
        ON CONFLICT DO UPDATE SET images = images + excluded.images,
            micro_usd = micro_usd + excluded.micro_usd,
            milli_neurons = milli_neurons + excluded.milli_neurons;
        INSERT INTO usage_counters (day, scope, scope_id, images, micro_usd, milli_neurons)
        VALUES (NEW.day, 'all', '', NEW.images, NEW.micro_usd, NEW.milli_neurons)
        ON CONFLICT DO UPDATE SET images = images + excluded.images,
            micro_usd = micro_usd + excluded.micro_usd,
            milli_neurons = milli_neurons + excluded.milli_neurons;
    END;

    -- Any change of what a job counts applies the difference to its three counters (a plain
    -- state change such as reserved -> storing -> settled at the estimate changes nothing).
    CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, images, micro_usd, milli_neurons
    ON jobs
    WHEN (NEW.state = 'refunded') != (OLD.state = 'refunded')
        OR NEW.images != OLD.images OR NEW.micro_usd != OLD.micro_usd
        OR NEW.milli_neurons != OLD.milli_neurons
    BEGIN
        UPDATE usage_counters SET
            images = images + (CASE WHEN NEW.state = 'refunded' THEN 0 ELSE NEW.images END)
                - (CASE WHEN OLD.state = 'refunded' THEN 0 ELSE OLD.images END),
            micro_usd = micro_usd
                + (CASE WHEN NEW.state = 'refunded' THEN 0 ELSE NEW.micro_usd END)
                - (CASE WHEN OLD.state = 'refunded' THEN 0 ELSE OLD.micro_usd END),
            milli_neurons = milli_neurons
                + (CASE WHEN NEW.state = 'refunded' THEN 0 ELSE NEW.milli_neurons END)
                - (CASE WHEN OLD.state = 'refunded' THEN 0 ELSE OLD.milli_neurons END)
        WHERE day = NEW.day AND scope = 'user' AND scope_id = NEW.guild_id || ':' || NEW.user_id;
        UPDATE usage_counters SET
            images = images + (CASE WHEN NEW.state = 'refunded' THEN 0 ELSE NEW.images END)
                - (CASE WHEN OLD.state = 'refunded' THEN 0 ELSE OLD.images END),
            micro_usd = micro_usd
                + (CASE WHEN NEW.state = 'refunded' THEN 0 ELSE NEW.micro_usd END)
                - (CASE WHEN OLD.state = 'refunded' THEN 0 ELSE OLD.micro_usd END),
            milli_neurons = milli_neurons
                + (CASE WHEN NEW.state = 'refunded' THEN 0 ELSE NEW.milli_neurons END)
                - (CASE WHEN OLD.state = 'refunded' THEN 0 ELSE OLD.milli_neurons END)
        WHERE day = NEW.day AND scope = 'guild' AND scope_id = NEW.guild_id
            AND NEW.guild_id != '';
        UPDATE usage_counters SET
            images = images + (CASE WHEN NEW.state = 'refunded' THEN 0 ELSE NEW.images END)
                - (CASE WHEN OLD.state = 'refunded' THEN 0 ELSE OLD.images END),
            micro_usd = micro_usd
                + (CASE WHEN NEW.state = 'refunded' THEN 0 ELSE NEW.micro_usd END)
                - (CASE WHEN OLD.state = 'refunded' THEN 0 ELSE OLD.micro_usd END),
            milli_neurons = milli_neurons
                + (CASE WHEN NEW.state = 'refunded' THEN 0 ELSE NEW.milli_neurons END)
                - (CASE WHEN OLD.state = 'refunded' THEN 0 ELSE OLD.milli_neurons END)
        WHERE day = NEW.day AND scope = 'all' AND scope_id = '';
    END;

    -- /quota reset-user: what the user had used when an admin reset them; their usage today
    -- counts from there. Charges themselves are never changed.
    CREATE TABLE quota_resets (
        day TEXT NOT NULL,
        user_scope TEXT NOT NULL,
        images INTEGER NOT NULL,
        micro_usd INTEGER NOT NULL,
        reset_by TEXT NOT NULL,
        reset_at TEXT NOT NULL,
        PRIMARY KEY (day, user_scope)
    ) WITHOUT ROWID;

    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('generated', 'upload')),
        job_id TEXT REFERENCES jobs (id),
        user_id TEXT NOT NULL,
        guild_id TEXT NOT NULL DEFAULT '',
        prompt TEXT,
        prompt_used TEXT,
        negative_prompt TEXT,
        model TEXT,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        steps INTEGER,
        seed INTEGER,
        guidance REAL,
        strength REAL,
        source_image_id TEXT,
        store TEXT NOT NULL,
        storage_key TEXT NOT NULL,
        url TEXT NOT NULL,
        content_type TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        cost_micro_usd INTEGER NOT NULL DEFAULT 0,
        cost_milli_neurons INTEGER NOT NULL DEFAULT 0,
        cached INTEGER NOT NULL DEFAULT 0,
        cache_key TEXT,
        cache_scope TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        is_deleted INTEGER NOT NULL DEFAULT 0,
        deleted_at TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX images_cache ON images (cache_key, cache_scope) WHERE is_deleted = 0;
    CREATE INDEX images_user ON images (user_id, created_at);
    CREATE INDEX images_job ON images (job_id);
    CREATE INDEX images_storage ON images (storage_key);

    CREATE TABLE templates (
        id TEXT PRIMARY KEY,
        guild_id TEXT NOT NULL,
        name TEXT NOT NULL COLLATE NOCASE,
        prompt TEXT NOT NULL,
        model TEXT,
        negative_prompt TEXT,
        aspect_ratio TEXT,
        steps INTEGER,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (guild_id, name)
    );
    """,
    # 2: the HTTP API: keys, batches and the placeholder cache.
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        guild_id TEXT NOT NULL DEFAULT '',
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        webhook_secret TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE INDEX api_keys_user ON api_keys (user_id);

    CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES api_keys (id),
        user_id TEXT NOT NULL,
        guild_id TEXT NOT NULL DEFAULT '',
        model TEXT,
        webhook_url TEXT,
        state TEXT NOT NULL CHECK (state IN ('running', 'done')),
        webhook_state TEXT CHECK (webhook_state IN ('pending', 'delivered', 'failed')),
        webhook_attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX batches_user ON batches (user_id, created_at);

    CREATE TABLE batch_items (
        batch_id TEXT NOT NULL REFERENCES batches (id),
        position INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        image_id TEXT,
        error_code TEXT,
        error_message TEXT,
        PRIMARY KEY (batch_id, position)
    ) WITHOUT ROWID;

    CREATE TABLE placeholders (
        path TEXT PRIMARY KEY,
        image_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 3: idempotency keys bound to their request; uploads metered by count and size; batches
    # hold their allowance.
    """
    ALTER TABLE jobs ADD COLUMN request_fingerprint TEXT;
    ALTER TABLE jobs ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_uploads ON jobs (user_id, day) WHERE kind = 'upload';

    -- A batch reserves its images ahead in a "hold" job; a job reserved against the hold takes
    -- its images from it in the same statement (the reservation's INSERT), so they are never
    -- counted twice and never free for anyone else in between.
    ALTER TABLE jobs ADD COLUMN hold_id TEXT;
    CREATE TRIGGER jobs_draw_from_hold AFTER INSERT ON jobs
    WHEN NEW.hold_id IS NOT NULL AND NEW.images > 0
    BEGIN
        UPDATE jobs SET images = MAX(0, images - NEW.images), updated_at = NEW.created_at
        WHERE id = NEW.hold_id AND state = 'reserved' AND day = NEW.day;
    END;
    """,
    # 4: how each job's result reached its user; NULL for jobs from before it was recorded.
    # 'undelivered' goes with state 'refunded': shown nowhere, so not charged.
    """
    ALTER TABLE jobs ADD COLUMN delivery TEXT
        CHECK (delivery IN ('interaction', 'channel', 'dm', 'undelivered', 'api', 'cli'));
    """,
    # 5: a private result (/imagine private:) is its owner's alone: not the server's to reuse
    # by id, not in the server's gallery. Older rows were all shared.
    """
    ALTER TABLE images ADD COLUMN private INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1));
    """,
    # 6: daily limits per role (a member gets the most generous of their roles' limits unless
    # an admin set their own), and the channels where a server lets generation answer (none
    # listed: everywhere).
    """
    CREATE TABLE role_quotas (
        guild_id TEXT NOT NULL,
        role_id TEXT NOT NULL,
        daily_images INTEGER,
        daily_micro_usd INTEGER,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (guild_id, role_id)
    );
    CREATE TABLE allowed_channels (
        guild_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        added_at TEXT NOT NULL,
        PRIMARY KEY (guild_id, channel_id)
    );
    """,
    # 7: processes and their leases. Each job names the process running it (NULL: from before
    # this, or a free job); a live process renews its lease, and any process closes the open
    # jobs of one whose lease ran out (see ``leases``).
    """
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        started_at TEXT NOT NULL,
        lease_until TEXT NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    """,
    # 8: a server's content rule: 'off' (every prompt is checked by the moderation model) or
    # 'age_restricted' (adult content allowed in age-restricted channels, unchecked there).
    """
    ALTER TABLE guild_settings ADD COLUMN adult_content TEXT NOT NULL DEFAULT 'off'
        CHECK (adult_content IN ('off', 'age_restricted'));
    """,
    # 9: limits shared by every process on this ledger. ``api_rate_windows``: requests per API
    # key per fixed window (old windows are deleted). ``cloudflare_grants``: blocks of slots of
    # a Cloudflare budget (``budget``: the account's API limit, or Workers AI's per-minute limit
    # of text-to-image or img2img runs), each counted until ``expires_ms`` (Unix ms).
    # ``cloudflare_pause``: one row, until when a 429 paused every call on the account.
    """
    CREATE TABLE api_rate_windows (
        key_id TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        requests INTEGER NOT NULL CHECK (requests > 0),
        PRIMARY KEY (key_id, window_start)
    ) WITHOUT ROWID;
    CREATE TABLE cloudflare_grants (
        id TEXT PRIMARY KEY,
        instance_id TEXT NOT NULL,
        budget TEXT NOT NULL DEFAULT 'account'
            CHECK (budget IN ('account', 'ai_run', 'ai_img2img')),
        slots INTEGER NOT NULL CHECK (slots > 0),
        granted_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE INDEX cloudflare_grants_live ON cloudflare_grants (budget, expires_ms);
    CREATE TABLE cloudflare_pause (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        paused_until_ms INTEGER NOT NULL
    );
    """,
    # 10: generations in flight, shared by every process: one row per (cache key, scope) while a
    # process (``owner``, an instance) generates that image, so an identical request elsewhere
    # waits for it (see ``flights``). Rows live seconds; a dead owner's are swept.
    """
    CREATE TABLE flights (
        cache_key TEXT NOT NULL,
        scope TEXT NOT NULL,
        owner TEXT NOT NULL,
        started_at TEXT NOT NULL,
        PRIMARY KEY (cache_key, scope)
    ) WITHOUT ROWID;
    """,
    # 11: no change here: PostgreSQL's batch hold trigger now finds the hold by primary key
    # only (against its cached generic plans); SQLite keeps no generic plans.
    "SELECT 1;",
    # 12: no change here (the number is another change's).
    "SELECT 1;",
    # 13: no change here: PostgreSQL's counting triggers write a job's three counter rows in
    # one statement; SQLite's triggers already run in-process with no per-statement round trip.
    "SELECT 1;",
)
