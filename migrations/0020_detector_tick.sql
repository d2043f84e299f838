-- When the leader's failure detector last ran: a leader that finds it long
-- ago (the database or every metaserver was away, so heartbeats could not
-- be recorded) waits offline_after before judging heartbeats.
ALTER TABLE cluster ADD COLUMN detector_at timestamptz;
