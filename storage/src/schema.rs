//! Diesel table definitions (the SQL lives in `migrations/`).

diesel::table! {
    /// The replicated log; `sequence` is the rowid.
    sync_log (sequence) {
        sequence -> BigInt,
        term -> BigInt,
        origin_device -> Text,
        timestamp_ms -> BigInt,
        model_type -> Text,
        record_id -> Text,
        change_type -> Text,
        version -> BigInt,
        data -> Binary,
        proposal_id -> Nullable<Text>,
        hash -> Nullable<Binary>,
        stamp -> Nullable<Binary>,
    }
}

diesel::table! {
    /// When each field of a record was last set (local, derived from the log's stamps).
    field_clock (model_type, record_id) {
        model_type -> Text,
        record_id -> Text,
        version -> BigInt,
        hlc -> Nullable<Binary>,
        fields -> Nullable<Binary>,
        deleted -> Bool,
    }
}

diesel::table! {
    /// Model `lsync.conflict`: the conflicts leaders decided (replicated).
    lsync_conflict (id) {
        id -> Text,
        model_type -> Text,
        record_id -> Text,
        outcome -> Text,
        decided_at_ms -> BigInt,
        data -> Binary,
        version -> BigInt,
    }
}

diesel::table! {
    /// Proposals committed here that wrote no entry (local).
    proposals (proposal_id) {
        proposal_id -> Text,
        first_sequence -> BigInt,
        last_sequence -> BigInt,
        committed_at_ms -> BigInt,
    }
}

diesel::table! {
    /// The durable outbox of proposals (local).
    outbox (proposal_id) {
        proposal_id -> Text,
        created_at_ms -> BigInt,
        changes -> Binary,
        attempts -> Integer,
        next_attempt_ms -> BigInt,
        last_error -> Nullable<Text>,
        seq -> BigInt,
        state -> Text,
        failed_reason -> Nullable<Text>,
        failed_at_ms -> Nullable<BigInt>,
        committed_last -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// The committed rows this device's pending changes overlay (local).
    pending_undo (model_type, record_id) {
        model_type -> Text,
        record_id -> Text,
        data -> Nullable<Binary>,
        version -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Local log entries set aside for divergence repair (local).
    stashed_entries (sequence, term) {
        sequence -> BigInt,
        term -> BigInt,
        origin_device -> Text,
        timestamp_ms -> BigInt,
        model_type -> Text,
        record_id -> Text,
        change_type -> Text,
        version -> BigInt,
        data -> Binary,
        proposal_id -> Nullable<Text>,
        hash -> Nullable<Binary>,
        stamp -> Nullable<Binary>,
    }
}

diesel::table! {
    /// This device's view of the library (a single row, `id = 1`).
    sync_state (id) {
        id -> Integer,
        library_id -> Text,
        device_id -> Text,
        role -> Text,
        current_term -> BigInt,
        voted_for -> Nullable<Text>,
        leader_device -> Nullable<Text>,
        last_synced_sequence -> BigInt,
        config_sequence -> BigInt,
        feature_version -> Integer,
        voters_since -> BigInt,
        previous_voters -> Nullable<Text>,
        rebuild_mark_sequence -> BigInt,
        rebuild_mark_term -> BigInt,
    }
}

diesel::table! {
    /// The library's member devices.
    devices (device_id) {
        device_id -> Text,
        peer_id -> Text,
        addresses -> Text,
        name -> Text,
        added_at_ms -> BigInt,
        role -> Text,
        preference -> Text,
    }
}

diesel::table! {
    /// Invitations this device issued (local): one-time secrets, stored hashed.
    invitations (secret_hash) {
        secret_hash -> Binary,
        created_at_ms -> BigInt,
        expires_at_ms -> BigInt,
        learner -> Bool,
        used_by -> Nullable<Text>,
        used_at_ms -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// The latest signed address hint of each device (local).
    address_hints (device_id) {
        device_id -> Text,
        addresses -> Text,
        counter -> BigInt,
        signature -> Binary,
    }
}

diesel::table! {
    /// Local jobs queued by bulk entries.
    local_jobs (id) {
        id -> BigInt,
        sequence -> BigInt,
        model_type -> Text,
        record_id -> Text,
        data -> Binary,
        status -> Text,
        created_at_ms -> BigInt,
    }
}

diesel::table! {
    /// Built-in model `tag`.
    tag (id) {
        id -> Text,
        name -> Text,
        color -> Nullable<Text>,
        version -> BigInt,
    }
}

diesel::table! {
    /// Built-in model `location`.
    location (id) {
        id -> Text,
        name -> Text,
        path -> Text,
        version -> BigInt,
    }
}

diesel::table! {
    /// The last hybrid logical clock timestamp this device issued (one row, id 1).
    hlc_state (id) {
        id -> Integer,
        physical_ms -> BigInt,
        counter -> BigInt,
    }
}
