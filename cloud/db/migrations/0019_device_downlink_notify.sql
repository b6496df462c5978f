-- Direct devices on the MQTT endpoint (`pulse cloud mqtt`, issue 23) get their twin deltas and
-- commands as soon as they change, on whichever instance holds their connection: a change of a
-- twin's desired state, and a command becoming queued, send NOTIFY pulse_device with
-- '{tenant}/{device}' (a payload of identifiers only; the listener reads the rows under the tenant's
-- row-level security). NOTIFY is delivered at commit, so a listener reads what was committed.

CREATE FUNCTION pulse_notify_twin_desired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.document -> 'state' -> 'desired' IS DISTINCT FROM NEW.document -> 'state' -> 'desired' THEN
        PERFORM pg_notify('pulse_device', NEW.tenant_id::text || '/' || NEW.device_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER twins_desired_notify AFTER INSERT OR UPDATE ON twins
    FOR EACH ROW EXECUTE FUNCTION pulse_notify_twin_desired();

CREATE FUNCTION pulse_notify_command_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'queued' AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state) THEN
        PERFORM pg_notify('pulse_device', NEW.tenant_id::text || '/' || NEW.device_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER commands_queued_notify AFTER INSERT OR UPDATE OF state ON commands
    FOR EACH ROW EXECUTE FUNCTION pulse_notify_command_queued();
