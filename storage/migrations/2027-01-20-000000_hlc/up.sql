-- Hybrid logical clock (docs/architecture.md, "Hybrid logical clock"): the last timestamp this
-- device issued, so that its timestamps never go back, across restarts and a wall clock stepped
-- back included. One row (id 1) once the device issued one. Local, never replicated.
CREATE TABLE hlc_state (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    physical_ms BIGINT NOT NULL,
    counter BIGINT NOT NULL
);
