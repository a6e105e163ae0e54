//! Replicated model types: the [`Syncable`] trait, [`ModelHandler`] and the [`ModelRegistry`].

use std::collections::HashMap;
use std::sync::Arc;

use diesel::sqlite::SqliteConnection;
use lsync_protocol::{ChangeType, SyncLogEntry};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::change::Change;
use crate::error::{Result, StorageError};

/// A model type that can be replicated. Serialized with rmp-serde (named fields) into
/// [`SyncLogEntry::data`].
pub trait Syncable: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The `model_type` of its log entries (e.g. `tag`).
    const MODEL_TYPE: &'static str;
    /// The record's primary key.
    fn record_id(&self) -> String;
}

/// How the storage writes one model type. A host registers one per model type in a
/// [`ModelRegistry`]; the built-in models are in [`crate::models`].
///
/// Every method runs inside the caller's transaction; a handler must not open its own.
pub trait ModelHandler: Send + Sync + 'static {
    /// The `model_type` it handles.
    fn model_type(&self) -> &str;
    /// The table holding the model's rows (listed by [`crate::Database::dump`]).
    fn table_name(&self) -> &str;
    /// Creates the table if it does not exist (`CREATE TABLE IF NOT EXISTS`); run at open.
    fn migrate(&self, conn: &mut SqliteConnection) -> Result<()>;
    /// Checks a change before the leader commits it: the data decodes as the model and its
    /// record id is `change.record_id`; a Delete has empty data. See [`validate_syncable`].
    /// A field-level change (Patch) is never passed here: the storage checks its encoding
    /// ([`crate::fields::check_patch`]) and passes the record it merges it into, as an Update.
    fn validate(&self, change: &Change) -> Result<()>;
    /// The stored version of the record, `None` if it does not exist.
    fn current_version(&self, conn: &mut SqliteConnection, record_id: &str) -> Result<Option<i64>>;
    /// The stored record (its data as an entry would carry it, and its version), `None` if it
    /// does not exist. The pending overlay keeps the committed row it covers with it
    /// (docs/architecture.md, "Local-first writes"); writing the result back with
    /// [`ModelHandler::apply`] (an Update of that data and version) must give the same row.
    ///
    /// The default reads the last log entry that wrote the record (a scan of the log, and
    /// wrong for rows that bulk jobs write): the built-in handlers read their own row, and a
    /// host's handler should too.
    fn load(&self, conn: &mut SqliteConnection, record_id: &str) -> Result<Option<StoredRecord>> {
        crate::sync_log::last_write(conn, self.model_type(), record_id)
    }
    /// Writes an Insert/Update entry (an upsert of the whole row with `entry.version`) or a
    /// Delete entry (removes the row if present). Bulk entries are never passed here.
    fn apply(&self, conn: &mut SqliteConnection, entry: &SyncLogEntry) -> Result<()>;
    /// Writes several Insert/Update/Delete entries of this model, in log order, with the same
    /// result as [`ModelHandler::apply`] on each in turn (the same entry may name one record
    /// several times: the later change wins). The storage calls this with all the entries of
    /// one transaction. The default applies them one by one; the built-in handlers write runs
    /// of upserts as one multi-row statement ([`apply_in_runs`]), which is several times
    /// cheaper per entry.
    fn apply_batch(&self, conn: &mut SqliteConnection, entries: &[&SyncLogEntry]) -> Result<()> {
        entries.iter().try_for_each(|entry| self.apply(conn, entry))
    }
    /// Deletes every row of the model (full reconciliation).
    fn clear(&self, conn: &mut SqliteConnection) -> Result<()>;
}

/// A stored record as [`ModelHandler::load`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record, encoded as an Insert/Update entry's data.
    pub data: Vec<u8>,
    /// Its version.
    pub version: i64,
}

/// Executes `$body` once per chunk of the slice `$rows`, with `$chunk` bound to a
/// `&[T; N]` for N in 100, 64, 32, 16, 8, 4, 2, 1 (100-row chunks, then the rest in powers of
/// two): for `diesel::insert_into(table).values($chunk)`.
///
/// Why: diesel never caches the prepared statement of a multi-row insert from a slice or a
/// `Vec` (its SQL depends on the length), so SQLite would parse and plan it at every
/// execution; an array's length is part of the statement's type, so each of these eight
/// statements is prepared once per connection and reused (docs/performance.md).
///
/// ```ignore
/// lsync_storage::in_cached_chunks!(&rows[..], |chunk| {
///     diesel::replace_into(tag::table).values(chunk).execute(conn)?
/// });
/// ```
#[macro_export]
macro_rules! in_cached_chunks {
    ($rows:expr, |$chunk:ident| $body:expr) => {{
        let mut rest = $rows;
        $crate::in_cached_chunks!(@sizes rest, $chunk, $body; 100, 64, 32, 16, 8, 4, 2, 1);
    }};
    (@sizes $rest:ident, $chunk:ident, $body:expr; $($n:literal),*) => {
        $(
            while $rest.len() >= $n {
                let (head, tail) = $rest.split_at($n);
                let $chunk: &[_; $n] = head.try_into().expect("split at the chunk's length");
                $body;
                $rest = tail;
            }
        )*
    };
}

/// Rows per statement written by [`apply_in_runs`].
pub const UPSERT_CHUNK: usize = 100;

/// A helper for [`ModelHandler::apply_batch`]: splits `entries` (in log order) into runs of
/// consecutive Insert/Update entries, each passed to `upsert` in slices of at most
/// [`UPSERT_CHUNK`] (for one multi-row `REPLACE`: SQLite writes its rows in order, so a later
/// row for the same record replaces an earlier one), and Delete entries, each passed to
/// `delete` between the runs around it. Bulk entries are skipped (they write no rows).
pub fn apply_in_runs(
    conn: &mut SqliteConnection,
    entries: &[&SyncLogEntry],
    mut upsert: impl FnMut(&mut SqliteConnection, &[&SyncLogEntry]) -> Result<()>,
    mut delete: impl FnMut(&mut SqliteConnection, &SyncLogEntry) -> Result<()>,
) -> Result<()> {
    let mut flush = |conn: &mut SqliteConnection, run: &[&SyncLogEntry]| {
        run.chunks(UPSERT_CHUNK).try_for_each(|chunk| upsert(conn, chunk))
    };
    let mut start = 0;
    for (i, entry) in entries.iter().enumerate() {
        match entry.change_type {
            ChangeType::Insert | ChangeType::Update => continue,
            ChangeType::Delete => {
                flush(conn, &entries[start..i])?;
                delete(conn, entry)?;
            }
            // No rows: bulk metadata, configuration entries (never handed to a model),
            // entries of a newer version (refused before any write) and patches (never entries:
            // the leader commits a patch as an Update).
            ChangeType::Bulk | ChangeType::Patch | ChangeType::Config | ChangeType::Unknown => {
                flush(conn, &entries[start..i])?
            }
        }
        start = i + 1;
    }
    flush(conn, &entries[start..])
}

/// Writes the model rows of `entries` (in log order; Bulk and configuration entries write
/// none): one
/// [`ModelHandler::apply_batch`] per model type, each with that type's entries in order (rows
/// of different types live in different tables, so only the order within a type matters).
/// The caller holds the transaction.
///
/// # Errors
/// [`StorageError::UnknownModel`] for an entry of an unregistered type (checked before any
/// write), or the first handler error.
pub(crate) fn apply_entries(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    entries: &[SyncLogEntry],
) -> Result<()> {
    let mut groups: Vec<(&dyn ModelHandler, Vec<&SyncLogEntry>)> = Vec::new();
    let mut current = 0;
    let writes_rows =
        |e: &&SyncLogEntry| !matches!(e.change_type, ChangeType::Bulk | ChangeType::Config);
    for entry in entries.iter().filter(writes_rows) {
        if groups.get(current).is_none_or(|(h, _)| h.model_type() != entry.model_type) {
            match groups.iter().position(|(h, _)| h.model_type() == entry.model_type) {
                Some(i) => current = i,
                None => {
                    let handler = registry
                        .handler(&entry.model_type)
                        .ok_or_else(|| StorageError::UnknownModel(entry.model_type.clone()))?;
                    current = groups.len();
                    groups.push((handler, Vec::with_capacity(entries.len())));
                }
            }
        }
        groups[current].1.push(entry);
    }
    groups.iter().try_for_each(|(handler, group)| handler.apply_batch(conn, group))
}

/// The model handlers known to a database, by model type, and each model's conflict policy.
/// Every registry also holds lsync's own model of conflict records
/// ([`crate::conflicts::ConflictHandler`]). Cheap to clone.
#[derive(Clone)]
pub struct ModelRegistry {
    handlers: Arc<HashMap<String, Arc<dyn ModelHandler>>>,
    policies: Arc<HashMap<String, crate::conflicts::ConflictPolicy>>,
}

impl Default for ModelRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRegistry").field("model_types", &self.model_types()).finish()
    }
}

impl ModelRegistry {
    /// A registry of no host model (lsync's own conflict records only).
    pub fn new() -> Self {
        let conflicts: Arc<dyn ModelHandler> = Arc::new(crate::conflicts::ConflictHandler);
        let handlers = HashMap::from([(conflicts.model_type().to_owned(), conflicts)]);
        Self { handlers: Arc::new(handlers), policies: Arc::default() }
    }

    /// Sets the conflict policy of `model_type` (default
    /// [`ConflictPolicy::LastWriterWins`](crate::ConflictPolicy::LastWriterWins);
    /// docs/architecture.md, "Conflicts"). Whichever device leads decides conflicts, so every
    /// device of a library must set the same policies.
    pub fn set_policy(
        &mut self,
        model_type: impl Into<String>,
        policy: crate::conflicts::ConflictPolicy,
    ) -> &mut Self {
        Arc::make_mut(&mut self.policies).insert(model_type.into(), policy);
        self
    }

    /// The conflict policy of `model_type`.
    pub fn policy(&self, model_type: &str) -> crate::conflicts::ConflictPolicy {
        self.policies.get(model_type).copied().unwrap_or_default()
    }

    /// A registry with the built-in models: [`crate::Tag`] and [`crate::Location`].
    pub fn with_builtin() -> Self {
        let mut registry = Self::new();
        registry
            .register(Arc::new(crate::models::TagHandler))
            .register(Arc::new(crate::models::LocationHandler));
        registry
    }

    /// Registers `handler` for its model type, replacing any handler of the same type.
    ///
    /// # Panics
    /// If the model type starts with `lsync.` (reserved for lsync's own entries, such as
    /// configuration entries): a programming error of the host, caught at its first start.
    pub fn register(&mut self, handler: Arc<dyn ModelHandler>) -> &mut Self {
        assert!(
            !handler.model_type().starts_with(lsync_protocol::RESERVED_MODEL_PREFIX),
            "model type {:?} is reserved: model types starting with {:?} belong to lsync",
            handler.model_type(),
            lsync_protocol::RESERVED_MODEL_PREFIX
        );
        Arc::make_mut(&mut self.handlers).insert(handler.model_type().to_owned(), handler);
        self
    }

    /// The handler of `model_type`.
    pub fn get(&self, model_type: &str) -> Option<Arc<dyn ModelHandler>> {
        self.handlers.get(model_type).cloned()
    }

    /// The handler of `model_type`, borrowed (no reference count traffic).
    pub fn handler(&self, model_type: &str) -> Option<&dyn ModelHandler> {
        self.handlers.get(model_type).map(|h| &**h)
    }

    /// Whether `model_type` is registered.
    pub fn contains(&self, model_type: &str) -> bool {
        self.handlers.contains_key(model_type)
    }

    /// The registered model types, sorted.
    pub fn model_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.handlers.keys().cloned().collect();
        types.sort();
        types
    }

    /// The registered handlers, sorted by model type.
    pub fn handlers(&self) -> Vec<Arc<dyn ModelHandler>> {
        let mut handlers: Vec<_> = self.handlers.values().cloned().collect();
        handlers.sort_by(|a, b| a.model_type().cmp(b.model_type()));
        handlers
    }
}

/// Serializes a model as MessagePack with named fields (`rmp_serde::to_vec_named`).
///
/// # Panics
/// If `M`'s `Serialize` implementation fails (derived implementations of plain structs never
/// do).
pub fn encode<M: Serialize + ?Sized>(model: &M) -> Vec<u8> {
    rmp_serde::to_vec_named(model).expect("serializing a model to MessagePack cannot fail")
}

/// Deserializes a model written by [`encode`]; failure is [`StorageError::InvalidChange`].
pub fn decode<'a, M: Deserialize<'a>>(data: &'a [u8]) -> Result<M> {
    rmp_serde::from_slice(data)
        .map_err(|e| StorageError::InvalidChange(format!("undecodable data: {e}")))
}

/// The standard [`ModelHandler::validate`] for a [`Syncable`] model: Insert/Update data must
/// decode as `M` with `record_id() == change.record_id`; Delete data must be empty; the record
/// id must not be empty; Patch data must be a map of fields ([`crate::fields::check_patch`];
/// the merged record is checked as an Update when the leader commits it). Bulk metadata is
/// opaque and not checked.
pub fn validate_syncable<M: Syncable>(change: &Change) -> Result<()> {
    if change.model_type != M::MODEL_TYPE {
        return Err(StorageError::InvalidChange(format!(
            "model type {:?} is not {:?}",
            change.model_type,
            M::MODEL_TYPE
        )));
    }
    if change.record_id.is_empty() {
        return Err(StorageError::InvalidChange(format!("empty record id for {}", M::MODEL_TYPE)));
    }
    match change.change_type {
        ChangeType::Insert | ChangeType::Update => {
            let model: M = decode(&change.data).map_err(|e| {
                StorageError::InvalidChange(format!("{} {}: {e}", M::MODEL_TYPE, change.record_id))
            })?;
            let id = model.record_id();
            if id != change.record_id {
                return Err(StorageError::InvalidChange(format!(
                    "{} data has record id {id:?}, the change says {:?}",
                    M::MODEL_TYPE,
                    change.record_id
                )));
            }
            Ok(())
        }
        ChangeType::Delete if !change.data.is_empty() => Err(StorageError::InvalidChange(format!(
            "delete of {} {} carries data",
            M::MODEL_TYPE,
            change.record_id
        ))),
        ChangeType::Delete | ChangeType::Bulk => Ok(()),
        ChangeType::Patch => crate::fields::check_patch(&change.data).map_err(|e| {
            StorageError::InvalidChange(format!("{} {}: {e}", M::MODEL_TYPE, change.record_id))
        }),
        ChangeType::Config | ChangeType::Unknown => Err(StorageError::InvalidChange(format!(
            "{} {}: a {} entry is not a change of a model",
            M::MODEL_TYPE,
            change.record_id,
            change.change_type.as_str()
        ))),
    }
}
