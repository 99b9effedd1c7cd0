-- kidsafe-backend schema, version 1: events, units, gaps, quarantine.
-- Applied by `kidsafe-backend migrate` inside one transaction (backend/migrate.py).

-- Every valid event, once: the unit's UUID is the key, so a resend is dropped by
-- INSERT ... ON CONFLICT (id) DO NOTHING.
CREATE TABLE events (
    id        uuid PRIMARY KEY,
    unit      text        NOT NULL,
    seq       bigint      NOT NULL CHECK (seq >= 1),
    site      text        NOT NULL,
    kind      text        NOT NULL,
    lane      text        NOT NULL CHECK (lane IN ('emergency', 'routine', 'telemetry')),
    time      timestamptz NOT NULL,  -- when it happened (unit's clock)
    recorded  timestamptz NOT NULL,  -- when the unit committed it
    reader    text,
    child     text,                  -- pseudonymous reference, never a name
    data      jsonb       NOT NULL,
    -- data.position (sos, zone_alert, roll_call) or data.lat/lon (geofences), for the map.
    -- Plain degrees (WGS 84): nothing here queries by distance yet; a PostGIS geography
    -- column can be added by a later migration (docs/backend.md).
    lat       double precision,
    lon       double precision,
    received  timestamptz NOT NULL DEFAULT now()  -- when the backend stored it
);
-- Gaps and receipts walk a unit's seqs in order. Not UNIQUE: a seq seen with two ids
-- would be a unit bug, and is kept (and visible) rather than refused.
CREATE INDEX events_unit_seq ON events (unit, seq);
CREATE INDEX events_kind_time ON events (kind, time DESC);
CREATE INDEX events_emergency ON events (time DESC) WHERE lane = 'emergency';
CREATE INDEX events_child_time ON events (child, time DESC) WHERE child IS NOT NULL;

-- Seqs a unit said it lost: the ranges of buffer_drop and buffer_salvage events. A gap
-- in events.seq inside these is explained; any other gap is not.
CREATE TABLE seq_losses (
    event_id  uuid   NOT NULL REFERENCES events (id),
    unit      text   NOT NULL,
    from_seq  bigint NOT NULL,
    to_seq    bigint NOT NULL CHECK (to_seq >= from_seq),
    source    text   NOT NULL CHECK (source IN ('buffer_drop', 'buffer_salvage')),
    PRIMARY KEY (event_id, from_seq)
);
CREATE INDEX seq_losses_unit ON seq_losses (unit, from_seq);

-- Gaps in each unit's stored seqs (before the first stored seq, from 1, and between
-- stored seqs). Whether a gap is explained is decided against seq_losses by
-- backend.gaps.classify (ranges may overlap and split a gap).
CREATE VIEW seq_gaps AS
SELECT unit, prev + 1 AS from_seq, seq - 1 AS to_seq
FROM (SELECT unit, seq, lag(seq, 1, 0::bigint) OVER (PARTITION BY unit ORDER BY seq) AS prev
      FROM events) s
WHERE seq > prev + 1;

-- The latest of what each unit said about itself.
CREATE TABLE units (
    unit            text PRIMARY KEY,
    site            text,
    state           text CHECK (state IN ('online', 'offline')),  -- retained status
    state_reason    text,
    state_time      timestamptz,  -- the unit's time; null for a last will
    state_received  timestamptz,
    birth           jsonb,
    birth_received  timestamptz,
    software        text,
    config_version  text,
    last_seq        bigint,  -- from the latest birth
    high_water_seq  bigint,
    mqtt            text,
    health          jsonb,
    health_received timestamptz,
    last_seen       timestamptz NOT NULL DEFAULT now()  -- anything valid from the unit
);

-- History of status, birth and health messages (health every interval: prune by received).
CREATE TABLE unit_messages (
    id        bigserial PRIMARY KEY,
    unit      text        NOT NULL,
    kind      text        NOT NULL CHECK (kind IN ('status', 'birth', 'health')),
    received  timestamptz NOT NULL DEFAULT now(),
    body      jsonb       NOT NULL
);
CREATE INDEX unit_messages_unit_kind ON unit_messages (unit, kind, received DESC);

-- Messages that broke the contract (not JSON, schema violation, topic and body disagree,
-- unknown topic): kept byte for byte with the reasons, counted, never dropped silently.
-- The same bytes on the same topic again only raise `times_seen`.
CREATE TABLE quarantine (
    id          bigserial PRIMARY KEY,
    topic       text        NOT NULL,
    payload     bytea       NOT NULL,
    digest      bytea       NOT NULL,  -- SHA-256 of topic NUL payload
    unit        text,                  -- from the topic, when it names one
    seq         bigint,                -- from the body, when it has an integer seq
    reasons     text[]      NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    times_seen  integer     NOT NULL DEFAULT 1,
    UNIQUE (digest)
);
