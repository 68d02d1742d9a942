-- The coordinator's working state, derived from the ledger and written in the
-- same transaction as the entry that changes it. Every row names the ledger
-- entry that created it, so it can be rebuilt and checked against the log.

CREATE TABLE blobs (
    sha256     BYTEA       NOT NULL,
    size       BIGINT      NOT NULL,
    stored_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    erased_at  TIMESTAMPTZ,
    CONSTRAINT blobs_pkey PRIMARY KEY (sha256),
    CONSTRAINT blobs_sha256_length CHECK (octet_length(sha256) = 32),
    CONSTRAINT blobs_size_nonnegative CHECK (size >= 0)
);

CREATE TABLE contributors (
    contributor_id TEXT        NOT NULL,
    organisation   TEXT        NOT NULL,
    public_key     BYTEA       NOT NULL,
    ledger_idx     BIGINT      NOT NULL,
    registered_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at     TIMESTAMPTZ,
    CONSTRAINT contributors_pkey PRIMARY KEY (contributor_id),
    CONSTRAINT contributors_public_key_unique UNIQUE (public_key),
    CONSTRAINT contributors_public_key_length CHECK (octet_length(public_key) = 32),
    CONSTRAINT contributors_ledger_idx_fkey FOREIGN KEY (ledger_idx) REFERENCES ledger_entries (idx)
);

CREATE TABLE anchors (
    digest       BYTEA       NOT NULL,
    files        JSONB       NOT NULL,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_current   BOOLEAN     NOT NULL DEFAULT false,
    CONSTRAINT anchors_pkey PRIMARY KEY (digest),
    CONSTRAINT anchors_digest_length CHECK (octet_length(digest) = 32)
);
CREATE UNIQUE INDEX anchors_one_current ON anchors (is_current) WHERE is_current;

CREATE TABLE consents (
    consent_id       TEXT        NOT NULL,
    contributor_id   TEXT        NOT NULL,
    expert_digest    BYTEA       NOT NULL,
    purposes         TEXT[]      NOT NULL,
    expires_at       TIMESTAMPTZ,
    data_description TEXT        NOT NULL,
    licence          TEXT        NOT NULL,
    jurisdiction     TEXT        NOT NULL,
    granted_idx      BIGINT      NOT NULL,
    state            TEXT        NOT NULL DEFAULT 'active',
    ended_idx        BIGINT,
    CONSTRAINT consents_pkey PRIMARY KEY (consent_id),
    CONSTRAINT consents_contributor_fkey FOREIGN KEY (contributor_id) REFERENCES contributors (contributor_id),
    CONSTRAINT consents_granted_idx_fkey FOREIGN KEY (granted_idx) REFERENCES ledger_entries (idx),
    CONSTRAINT consents_ended_idx_fkey FOREIGN KEY (ended_idx) REFERENCES ledger_entries (idx),
    CONSTRAINT consents_expert_digest_length CHECK (octet_length(expert_digest) = 32),
    CONSTRAINT consents_state_valid CHECK (state IN ('active', 'withdrawn', 'expired')),
    CONSTRAINT consents_ended_has_index CHECK ((state = 'active') = (ended_idx IS NULL)),
    CONSTRAINT consents_purposes_nonempty CHECK (cardinality(purposes) > 0)
);
CREATE INDEX consents_contributor ON consents (contributor_id);
CREATE INDEX consents_expert ON consents (expert_digest);

CREATE TABLE submissions (
    submission_id  TEXT        NOT NULL,
    contributor_id TEXT        NOT NULL,
    expert_digest  BYTEA       NOT NULL,
    anchor_digest  BYTEA       NOT NULL,
    manifest       JSONB       NOT NULL,
    payload_size   BIGINT      NOT NULL,
    state          TEXT        NOT NULL DEFAULT 'validating',
    reason_code    TEXT,
    submitted_idx  BIGINT      NOT NULL,
    decided_idx    BIGINT,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT submissions_pkey PRIMARY KEY (submission_id),
    CONSTRAINT submissions_contributor_fkey FOREIGN KEY (contributor_id) REFERENCES contributors (contributor_id),
    CONSTRAINT submissions_submitted_idx_fkey FOREIGN KEY (submitted_idx) REFERENCES ledger_entries (idx),
    CONSTRAINT submissions_decided_idx_fkey FOREIGN KEY (decided_idx) REFERENCES ledger_entries (idx),
    CONSTRAINT submissions_expert_digest_length CHECK (octet_length(expert_digest) = 32),
    CONSTRAINT submissions_state_valid CHECK (state IN ('validating', 'accepted', 'rejected', 'erased')),
    CONSTRAINT submissions_rejected_has_reason CHECK ((state = 'rejected') = (reason_code IS NOT NULL)),
    CONSTRAINT submissions_payload_size_nonnegative CHECK (payload_size >= 0)
);
CREATE INDEX submissions_contributor ON submissions (contributor_id);
-- One live (validating or accepted) submission per contributor and expert: a
-- duplicate upload finds the existing one instead of a second row.
CREATE UNIQUE INDEX submissions_one_live_per_expert
    ON submissions (contributor_id, expert_digest) WHERE state IN ('validating', 'accepted');

CREATE TABLE validation_results (
    submission_id TEXT    NOT NULL,
    step_no       INTEGER NOT NULL,
    step          TEXT    NOT NULL,
    passed        BOOLEAN NOT NULL,
    figure        TEXT,
    reason_code   TEXT,
    detail        TEXT    NOT NULL DEFAULT '',
    CONSTRAINT validation_results_pkey PRIMARY KEY (submission_id, step_no),
    CONSTRAINT validation_results_submission_fkey FOREIGN KEY (submission_id) REFERENCES submissions (submission_id),
    CONSTRAINT validation_results_failure_has_reason CHECK (passed OR reason_code IS NOT NULL)
);

CREATE TABLE experts (
    expert_digest  BYTEA       NOT NULL,
    submission_id  TEXT        NOT NULL,
    contributor_id TEXT        NOT NULL,
    blob_sha256    BYTEA       NOT NULL,
    accepted_idx   BIGINT      NOT NULL,
    erased_idx     BIGINT,
    CONSTRAINT experts_pkey PRIMARY KEY (expert_digest),
    CONSTRAINT experts_submission_unique UNIQUE (submission_id),
    CONSTRAINT experts_submission_fkey FOREIGN KEY (submission_id) REFERENCES submissions (submission_id),
    CONSTRAINT experts_contributor_fkey FOREIGN KEY (contributor_id) REFERENCES contributors (contributor_id),
    CONSTRAINT experts_blob_fkey FOREIGN KEY (blob_sha256) REFERENCES blobs (sha256),
    CONSTRAINT experts_accepted_idx_fkey FOREIGN KEY (accepted_idx) REFERENCES ledger_entries (idx),
    CONSTRAINT experts_erased_idx_fkey FOREIGN KEY (erased_idx) REFERENCES ledger_entries (idx)
);

CREATE TABLE versions (
    version         BIGINT      NOT NULL,
    parent          BIGINT,
    purpose         TEXT        NOT NULL,
    top_k           INTEGER     NOT NULL,
    anchor_digest   BYTEA       NOT NULL,
    checkpoint_digest BYTEA     NOT NULL,
    ledger_idx      BIGINT      NOT NULL,
    published_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_idx     BIGINT,
    CONSTRAINT versions_pkey PRIMARY KEY (version),
    CONSTRAINT versions_positive CHECK (version > 0),
    CONSTRAINT versions_parent_fkey FOREIGN KEY (parent) REFERENCES versions (version),
    CONSTRAINT versions_parent_earlier CHECK (parent IS NULL OR parent < version),
    CONSTRAINT versions_anchor_fkey FOREIGN KEY (anchor_digest) REFERENCES anchors (digest),
    CONSTRAINT versions_ledger_idx_fkey FOREIGN KEY (ledger_idx) REFERENCES ledger_entries (idx),
    CONSTRAINT versions_revoked_idx_fkey FOREIGN KEY (revoked_idx) REFERENCES ledger_entries (idx),
    CONSTRAINT versions_top_k_positive CHECK (top_k > 0)
);
CREATE INDEX versions_purpose ON versions (purpose, version DESC);

CREATE TABLE version_experts (
    version       BIGINT  NOT NULL,
    position      INTEGER NOT NULL,
    expert_digest BYTEA   NOT NULL,
    consent_id    TEXT    NOT NULL,
    CONSTRAINT version_experts_pkey PRIMARY KEY (version, position),
    CONSTRAINT version_experts_expert_once UNIQUE (version, expert_digest),
    CONSTRAINT version_experts_version_fkey FOREIGN KEY (version) REFERENCES versions (version),
    CONSTRAINT version_experts_expert_fkey FOREIGN KEY (expert_digest) REFERENCES experts (expert_digest),
    CONSTRAINT version_experts_consent_fkey FOREIGN KEY (consent_id) REFERENCES consents (consent_id),
    CONSTRAINT version_experts_position_positive CHECK (position > 0)
);
CREATE INDEX version_experts_expert ON version_experts (expert_digest);

-- Nonces of signed requests seen within the timestamp window (replay protection).
-- Rows older than the window may be pruned; the window check rejects their replays.
CREATE TABLE request_nonces (
    key_id  TEXT        NOT NULL,
    nonce   BYTEA       NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT request_nonces_pkey PRIMARY KEY (key_id, nonce),
    CONSTRAINT request_nonces_nonce_length CHECK (octet_length(nonce) BETWEEN 16 AND 64)
);
CREATE INDEX request_nonces_seen_at ON request_nonces (seen_at);
