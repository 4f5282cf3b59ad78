"""The numbered migrations of ``bot.ledger.migrations`` in PostgreSQL's spelling.

Same numbers, same tables, columns and constraints (tests/test_schema_parity.py compares
them): BIGINT for every integer (money, counters, sizes, seeds), DOUBLE PRECISION for REAL,
CITEXT for the case-blind template name (SQLite's ``COLLATE NOCASE``), triggers as plpgsql
functions, and a ``schema_version`` table instead of ``PRAGMA user_version`` (kept by
``bot.ledger.postgres``). Change both files together: a new migration gets the same number in
each.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the whole first schema (tables and indexes as in SQLite; triggers as functions).
    """
    -- Template names compare without regard to case, as SQLite's COLLATE NOCASE.
    CREATE EXTENSION IF NOT EXISTS citext;

    CREATE TABLE guild_settings (
        guild_id TEXT PRIMARY KEY,
        daily_micro_usd BIGINT,
        user_daily_images BIGINT,
        user_daily_micro_usd BIGINT,
        blocklist TEXT NOT NULL DEFAULT '[]',
        updated_at TEXT NOT NULL
    );

    CREATE TABLE user_quotas (
        guild_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        daily_images BIGINT,
        daily_micro_usd BIGINT,
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
        images BIGINT NOT NULL DEFAULT 0,
        micro_usd BIGINT NOT NULL DEFAULT 0,
        milli_neurons BIGINT NOT NULL DEFAULT 0,
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
        images BIGINT NOT NULL DEFAULT 0,
        micro_usd BIGINT NOT NULL DEFAULT 0,
        milli_neurons BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (day, scope, scope_id)
    );

    -- The counters are kept by triggers, as in SQLite: one function applies a change of what
    -- a job counts to its user's, its server's and the whole bot's row for the day.
    CREATE FUNCTION ledger_count(d TEXT, g TEXT, u TEXT, i BIGINT, usd BIGINT, mn BIGINT)
    RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO usage_counters AS c (day, scope, scope_id, images, micro_usd, milli_neurons)
        VALUES (d, 'user', g || ':' || u, i, usd, mn)
        ON CONFLICT (day, scope, scope_id) DO UPDATE SET images = c.images + excluded.images,
            micro_usd = c.micro_usd + excluded.micro_usd,
            milli_neurons = c.milli_neurons + excluded.milli_neurons;
        IF g != '' THEN
            INSERT INTO usage_counters AS c (day, scope, scope_id, images, micro_usd,
                                             milli_neurons)
            VALUES (d, 'guild', g, i, usd, mn)
            ON CONFLICT (day, scope, scope_id) DO UPDATE SET images = c.images + excluded.images,
                micro_usd = c.micro_usd + excluded.micro_usd,
                milli_neurons = c.milli_neurons + excluded.milli_neurons;
        END IF;
        INSERT INTO usage_counters AS c (day, scope, scope_id, images, micro_usd, milli_neurons)
        VALUES (d, 'all', '', i, usd, mn)
        ON CONFLICT (day, scope, scope_id) DO UPDATE SET images = c.images + excluded.images,
            micro_usd = c.micro_usd + excluded.micro_usd,
            milli_neurons = c.milli_neurons + excluded.milli_neurons;
    END $$;

    CREATE FUNCTION jobs_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM ledger_count(NEW.day, NEW.guild_id, NEW.user_id, NEW.images, NEW.micro_usd,
                             NEW.milli_neurons);
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state != 'refunded') EXECUTE FUNCTION jobs_count_insert();

    -- Any change of what a job counts applies the difference to its three counters.
    CREATE FUNCTION jobs_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        was_counted BOOLEAN := OLD.state != 'refunded';
        is_counted BOOLEAN := NEW.state != 'refunded';
    BEGIN
        PERFORM ledger_count(NEW.day, NEW.guild_id, NEW.user_id,
            (CASE WHEN is_counted THEN NEW.images ELSE 0 END)
                - (CASE WHEN was_counted THEN OLD.images ELSE 0 END),
            (CASE WHEN is_counted THEN NEW.micro_usd ELSE 0 END)
                - (CASE WHEN was_counted THEN OLD.micro_usd ELSE 0 END),
            (CASE WHEN is_counted THEN NEW.milli_neurons ELSE 0 END)
                - (CASE WHEN was_counted THEN OLD.milli_neurons ELSE 0 END));
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, images, micro_usd, milli_neurons
    ON jobs FOR EACH ROW
    WHEN ((NEW.state = 'refunded') != (OLD.state = 'refunded')
        OR NEW.images != OLD.images OR NEW.micro_usd != OLD.micro_usd
        OR NEW.milli_neurons != OLD.milli_neurons)
    EXECUTE FUNCTION jobs_count_update();

    -- /quota reset-user: what the user had used when an admin reset them; their usage today
    -- counts from there. Charges themselves are never changed.
    CREATE TABLE quota_resets (
        day TEXT NOT NULL,
        user_scope TEXT NOT NULL,
        images BIGINT NOT NULL,
        micro_usd BIGINT NOT NULL,
        reset_by TEXT NOT NULL,
        reset_at TEXT NOT NULL,
        PRIMARY KEY (day, user_scope)
    );

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
        width BIGINT NOT NULL,
        height BIGINT NOT NULL,
        steps BIGINT,
        seed BIGINT,
        guidance DOUBLE PRECISION,
        strength DOUBLE PRECISION,
        source_image_id TEXT,
        store TEXT NOT NULL,
        storage_key TEXT NOT NULL,
        url TEXT NOT NULL,
        content_type TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        cost_micro_usd BIGINT NOT NULL DEFAULT 0,
        cost_milli_neurons BIGINT NOT NULL DEFAULT 0,
        cached BIGINT NOT NULL DEFAULT 0,
        cache_key TEXT,
        cache_scope TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        is_deleted BIGINT NOT NULL DEFAULT 0,
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
        name CITEXT NOT NULL,
        prompt TEXT NOT NULL,
        model TEXT,
        negative_prompt TEXT,
        aspect_ratio TEXT,
        steps BIGINT,
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
        webhook_attempts BIGINT NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX batches_user ON batches (user_id, created_at);

    CREATE TABLE batch_items (
        batch_id TEXT NOT NULL REFERENCES batches (id),
        position BIGINT NOT NULL,
        prompt TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        image_id TEXT,
        error_code TEXT,
        error_message TEXT,
        PRIMARY KEY (batch_id, position)
    );

    CREATE TABLE placeholders (
        path TEXT PRIMARY KEY,
        image_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # 3: idempotency keys bound to their request; uploads metered; batches hold their allowance.
    """
    ALTER TABLE jobs ADD COLUMN request_fingerprint TEXT;
    ALTER TABLE jobs ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX jobs_uploads ON jobs (user_id, day) WHERE kind = 'upload';

    -- A batch reserves its images ahead in a "hold" job; a job reserved against the hold takes
    -- its images from it in the same statement (the reservation's INSERT), so they are never
    -- counted twice and never free for anyone else in between.
    ALTER TABLE jobs ADD COLUMN hold_id TEXT;
    CREATE FUNCTION jobs_draw_from_hold() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE jobs SET images = GREATEST(0, images - NEW.images), updated_at = NEW.created_at
        WHERE id = NEW.hold_id AND state = 'reserved' AND day = NEW.day;
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_draw_from_hold AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.hold_id IS NOT NULL AND NEW.images > 0)
    EXECUTE FUNCTION jobs_draw_from_hold();
""",
    # 4: how each job's result reached its user.
    """
    ALTER TABLE jobs ADD COLUMN delivery TEXT
        CHECK (delivery IN ('interaction', 'channel', 'dm', 'undelivered', 'api', 'cli'));
    """,
    # 5: a private result is its owner's alone.
    """
    ALTER TABLE images ADD COLUMN private BIGINT NOT NULL DEFAULT 0 CHECK (private IN (0, 1));
    """,
    # 6: daily limits per role, and the channels where a server lets generation answer.
    """
    CREATE TABLE role_quotas (
        guild_id TEXT NOT NULL,
        role_id TEXT NOT NULL,
        daily_images BIGINT,
        daily_micro_usd BIGINT,
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
    # 7: processes and their leases (see bot/ledger/leases.py).
    """
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        started_at TEXT NOT NULL,
        lease_until TEXT NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    """,
    # 8: a server's content rule.
    """
    ALTER TABLE guild_settings ADD COLUMN adult_content TEXT NOT NULL DEFAULT 'off'
        CHECK (adult_content IN ('off', 'age_restricted'));
    """,
    # 9: limits shared by every process: API rate windows, Cloudflare grants (per budget), pause.
    """
    CREATE TABLE api_rate_windows (
        key_id TEXT NOT NULL,
        window_start BIGINT NOT NULL,
        requests BIGINT NOT NULL CHECK (requests > 0),
        PRIMARY KEY (key_id, window_start)
    );
    CREATE TABLE cloudflare_grants (
        id TEXT PRIMARY KEY,
        instance_id TEXT NOT NULL,
        budget TEXT NOT NULL DEFAULT 'account'
            CHECK (budget IN ('account', 'ai_run', 'ai_img2img')),
        slots BIGINT NOT NULL CHECK (slots > 0),
        granted_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL
    );
    CREATE INDEX cloudflare_grants_live ON cloudflare_grants (budget, expires_ms);
    CREATE TABLE cloudflare_pause (
        id BIGINT PRIMARY KEY CHECK (id = 1),
        paused_until_ms BIGINT NOT NULL
    );
    """,
    # 10: generations in flight, shared by every process (see bot/ledger/flights.py).
    """
    CREATE TABLE flights (
        cache_key TEXT NOT NULL,
        scope TEXT NOT NULL,
        owner TEXT NOT NULL,
        started_at TEXT NOT NULL,
        PRIMARY KEY (cache_key, scope)
    );
    """,
    # 11: a batch's draw from its hold finds the hold by primary key only. plpgsql keeps one
    # generic plan per connection; made on a new ledger, ``id = … AND state = 'reserved' AND
    # day = …`` was planned through jobs_open or jobs_day, which grow with the day's jobs. The
    # CASE leaves the planner nothing but the key to search by; the rows changed are the same.
    """
    CREATE OR REPLACE FUNCTION jobs_draw_from_hold() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE jobs SET images = GREATEST(0, images - NEW.images), updated_at = NEW.created_at
        WHERE id = NEW.hold_id
          AND CASE WHEN state = 'reserved' AND day = NEW.day THEN TRUE ELSE FALSE END;
        RETURN NULL;
    END $$;
    """,
    # 12: no change here (the number is another change's).
    "SELECT 1;",
    # 13: a job's three counter rows (user, server, 'all') in ONE upsert, and a reservation's
    # written by its trigger function itself: three upserts through a nested ledger_count()
    # call cost ~45 us of server CPU a reservation, under the writer lock. Same rows, same
    # sums, in the same order (the VALUES list's); every writer holds the writer lock anyway.
    """
    CREATE OR REPLACE FUNCTION ledger_count(d TEXT, g TEXT, u TEXT, i BIGINT, usd BIGINT, mn BIGINT)
    RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO usage_counters AS c (day, scope, scope_id, images, micro_usd, milli_neurons)
        SELECT d, v.scope, v.scope_id, i, usd, mn
        FROM (VALUES ('user', g || ':' || u), ('guild', g), ('all', '')) AS v (scope, scope_id)
        WHERE v.scope != 'guild' OR g != ''
        ON CONFLICT (day, scope, scope_id) DO UPDATE SET images = c.images + excluded.images,
            micro_usd = c.micro_usd + excluded.micro_usd,
            milli_neurons = c.milli_neurons + excluded.milli_neurons;
    END $$;

    CREATE OR REPLACE FUNCTION jobs_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO usage_counters AS c (day, scope, scope_id, images, micro_usd, milli_neurons)
        SELECT NEW.day, v.scope, v.scope_id, NEW.images, NEW.micro_usd, NEW.milli_neurons
        FROM (VALUES ('user', NEW.guild_id || ':' || NEW.user_id), ('guild', NEW.guild_id),
                     ('all', '')) AS v (scope, scope_id)
        WHERE v.scope != 'guild' OR NEW.guild_id != ''
        ON CONFLICT (day, scope, scope_id) DO UPDATE SET images = c.images + excluded.images,
            micro_usd = c.micro_usd + excluded.micro_usd,
            milli_neurons = c.milli_neurons + excluded.milli_neurons;
        RETURN NULL;
    END $$;
    """,
)
