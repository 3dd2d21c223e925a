-- Per output partition the outbox publishes to: the offset from which
-- publisher recovery reads the partition back. Every message this job wrote,
-- or may yet have written, for a row still in `outbox` lies at or after it;
-- everything below it is either acknowledged (and its row deleted) or another
-- producer's. Written by the publisher only.
CREATE TABLE outbox_partitions (
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    scan_from BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
