-- The consent ledger: entries and the hashes of complete subtrees of their
-- RFC 6962 Merkle tree. Both tables are append-only, enforced by triggers that
-- refuse UPDATE, DELETE and TRUNCATE; an edit made with the triggers disabled
-- is still detected by replaying the log (the leaf hashes and seals break).

CREATE TABLE ledger_entries (
    idx        BIGINT      NOT NULL,
    bytes      BYTEA       NOT NULL,
    leaf_hash  BYTEA       NOT NULL,
    kind       TEXT        NOT NULL,
    appended_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT ledger_entries_pkey PRIMARY KEY (idx),
    CONSTRAINT ledger_entries_idx_nonnegative CHECK (idx >= 0),
    CONSTRAINT ledger_entries_leaf_hash_length CHECK (octet_length(leaf_hash) = 32),
    CONSTRAINT ledger_entries_bytes_length CHECK (octet_length(bytes) BETWEEN 1 AND 65535)
);

CREATE TABLE ledger_tree_hashes (
    level SMALLINT NOT NULL,
    idx   BIGINT   NOT NULL,
    hash  BYTEA    NOT NULL,
    CONSTRAINT ledger_tree_hashes_pkey PRIMARY KEY (level, idx),
    CONSTRAINT ledger_tree_hashes_level_range CHECK (level BETWEEN 0 AND 63),
    CONSTRAINT ledger_tree_hashes_idx_nonnegative CHECK (idx >= 0),
    CONSTRAINT ledger_tree_hashes_hash_length CHECK (octet_length(hash) = 32)
);

-- Signed checkpoints the coordinator produced, newest last.
CREATE TABLE ledger_checkpoints (
    size      BIGINT      NOT NULL,
    root_hash BYTEA       NOT NULL,
    note      TEXT        NOT NULL,
    signed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT ledger_checkpoints_pkey PRIMARY KEY (size),
    CONSTRAINT ledger_checkpoints_root_length CHECK (octet_length(root_hash) = 32)
);

CREATE FUNCTION tributary_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION tributary_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION tributary_refuse_change();

CREATE TRIGGER ledger_tree_hashes_append_only
    BEFORE UPDATE OR DELETE ON ledger_tree_hashes
    FOR EACH ROW EXECUTE FUNCTION tributary_refuse_change();
CREATE TRIGGER ledger_tree_hashes_no_truncate
    BEFORE TRUNCATE ON ledger_tree_hashes
    FOR EACH STATEMENT EXECUTE FUNCTION tributary_refuse_change();

CREATE TRIGGER ledger_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION tributary_refuse_change();
CREATE TRIGGER ledger_checkpoints_no_truncate
    BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION tributary_refuse_change();
