-- Live updates for the operator page: PostgreSQL NOTIFY at commit, no polling.
-- LISTEN kidsafe_events: one notification per statement that stored new events, payload
--   {"events": <how many>, "units": [...], "emergency": [<ids of new emergency-lane
--    events>, at most 100], "more_emergency": <true when there were more>}
-- LISTEN kidsafe_units: one per statement that changed units (status, birth, health,
--   last_seen), payload {"units": [...]}.
-- Notifications are delivered only when the transaction commits, so a listener never
-- hears of an event that is not stored.

CREATE FUNCTION kidsafe_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total integer;
BEGIN
    SELECT count(*) INTO total FROM new_events;
    IF total > 0 THEN
        PERFORM pg_notify('kidsafe_events', json_build_object(
            'events', total,
            'units', (SELECT json_agg(DISTINCT unit) FROM new_events),
            'emergency', coalesce((SELECT json_agg(id) FROM (SELECT id FROM new_events
                WHERE lane = 'emergency' ORDER BY time LIMIT 100) e), '[]'::json),
            'more_emergency', (SELECT count(*) > 100 FROM new_events WHERE lane = 'emergency')
        )::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION kidsafe_notify_events();

CREATE FUNCTION kidsafe_notify_units() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed json;
BEGIN
    SELECT json_agg(DISTINCT unit) INTO changed FROM new_units;
    IF changed IS NOT NULL THEN
        PERFORM pg_notify('kidsafe_units', json_build_object('units', changed)::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER units_notify_insert AFTER INSERT ON units
    REFERENCING NEW TABLE AS new_units
    FOR EACH STATEMENT EXECUTE FUNCTION kidsafe_notify_units();
CREATE TRIGGER units_notify_update AFTER UPDATE ON units
    REFERENCING NEW TABLE AS new_units
    FOR EACH STATEMENT EXECUTE FUNCTION kidsafe_notify_units();
