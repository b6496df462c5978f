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

-- A device token rotated or revoked, or a device's status changed, sends NOTIFY pulse_credential
-- ('{credential id}' or 'device:{device uuid}'): the MQTT endpoints forget the cached identity and
-- end the device's live session at once (its reconnect is checked against the database again).

CREATE FUNCTION pulse_notify_credential() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.secret_hash IS DISTINCT FROM NEW.secret_hash OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at THEN
        PERFORM pg_notify('pulse_credential', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER device_credentials_notify AFTER UPDATE ON device_credentials
    FOR EACH ROW EXECUTE FUNCTION pulse_notify_credential();

CREATE FUNCTION pulse_notify_device_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IS DISTINCT FROM NEW.status THEN
        PERFORM pg_notify('pulse_credential', 'device:' || NEW.id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_status_notify AFTER UPDATE OF status ON devices
    FOR EACH ROW EXECUTE FUNCTION pulse_notify_device_status();
