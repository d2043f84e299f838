-- Erasure-coded layouts with their stripe unit, and the iSCSI access control
-- of every volume: CHAP credentials and an initiator allowlist.

-- ec:K+M beside the mirrors; the metaserver checks 2 <= K, 1 <= M, K+M <= 20.
ALTER TABLE volumes DROP CONSTRAINT volumes_layout_check;
ALTER TABLE volumes ADD CONSTRAINT volumes_layout_check
    CHECK (layout IN ('mirror:2', 'mirror:3') OR layout ~ '^ec:[1-9][0-9]?\+[1-9][0-9]?$');

-- The bytes of one EC stripe on one member: a power of two from 4 KiB to
-- 1 MiB for ec layouts, 0 for mirrors.
ALTER TABLE volumes ADD COLUMN stripe_unit bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT volumes_stripe_unit_check CHECK (
        CASE WHEN layout LIKE 'ec:%'
             THEN stripe_unit BETWEEN 4096 AND 1048576 AND stripe_unit & (stripe_unit - 1) = 0
             ELSE stripe_unit = 0
        END);

-- CHAP: the user names in clear, the secrets sealed by the metaserver
-- (AES-256-GCM under a key derived from cluster.secret; the format is drawn
-- in the metaserver package doc). An empty user means no CHAP (or no mutual
-- CHAP), and then its secret is NULL.
ALTER TABLE volumes
    ADD COLUMN chap_user     text  NOT NULL DEFAULT '',
    ADD COLUMN chap_secret   bytea,
    ADD COLUMN mutual_user   text  NOT NULL DEFAULT '',
    ADD COLUMN mutual_secret bytea,
    ADD CONSTRAINT volumes_chap_check CHECK ((chap_user = '') = (chap_secret IS NULL)),
    ADD CONSTRAINT volumes_mutual_check CHECK (
        (mutual_user = '') = (mutual_secret IS NULL) AND (mutual_user = '' OR chap_user <> ''));

-- The iSCSI names of the initiators that may log in, in canonical form;
-- empty: every initiator.
ALTER TABLE volumes ADD COLUMN allowed_initiators text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT volumes_allowed_initiators_check CHECK (cardinality(allowed_initiators) <= 256);
