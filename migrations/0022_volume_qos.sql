-- A volume's I/O limits (api.QoS as JSON, normalized: every limit with a
-- rate has its burst); '{}' limits nothing. The serving host applies a
-- change without a detach.
ALTER TABLE volumes ADD COLUMN qos jsonb NOT NULL DEFAULT '{}';
