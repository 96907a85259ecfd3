-- One row that /readyz rewrites while database writes fail, to learn when they work again
-- without waiting for an upload to try.
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at TEXT NOT NULL
);
INSERT INTO write_probe (id, probed_at) VALUES (1, '');
