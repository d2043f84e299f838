-- A disk whose chunkserver refused a write for lack of space since its free
-- space last measured above the nearly-full mark: it is full whatever
-- free_bytes says (a request larger than what is left was refused).
ALTER TABLE disks ADD COLUMN out_of_space boolean NOT NULL DEFAULT false;
