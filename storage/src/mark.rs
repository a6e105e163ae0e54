//! The high-water mark (docs/architecture.md, "Restores are detected"): the last log position
//! this device is known to have held — acknowledged as a follower or committed as a leader —
//! and the chain hash of its entry there, kept in two small files beside the database (the
//! fsynced `<db>.mark` and the cheap `<db>.mark.ack`), and the rule that compares a database
//! with it ([`check`]: caught up, behind, or holding another history at the mark's sequence).
//! Beside them, the configuration this device last knew (`<db>.mark.members`,
//! [`MarkedConfiguration`]) and the rule that admits its members while the database is behind
//! ([`admitted_while_behind`]): a device restored to a copy older than the devices that joined
//! since still lets the leader they elected in, and catches up from it.

use std::path::{Path, PathBuf};

use lsync_protocol::{ChainHash, Configuration, Member};

use crate::error::{Result, StorageError};
use crate::sync_log::{LogHead, LogPosition};
use crate::sync_state::write_durably;

/// A high-water mark: a log position and, when known, the chain hash of the entry there
/// (`None`: a mark written by a version of lsync before the hash, or a position whose entry
/// was not found when it was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// The position.
    pub position: LogPosition,
    /// The chain hash of the entry at `position`, when known.
    pub hash: Option<ChainHash>,
}

impl From<LogPosition> for Mark {
    /// A mark without a hash.
    fn from(position: LogPosition) -> Self {
        Self { position, hash: None }
    }
}

impl From<LogHead> for Mark {
    /// The mark of a log's last entry.
    fn from(head: LogHead) -> Self {
        Self { position: head.position, hash: Some(head.hash) }
    }
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.hash {
            Some(hash) => write!(f, "{} {}", self.position, hash.short()),
            None => write!(f, "{}", self.position),
        }
    }
}

impl Mark {
    /// The higher of two marks (positions compare term first); at the same position the one
    /// with a hash, `b`'s if both have one.
    pub fn higher(a: Option<Mark>, b: Option<Mark>) -> Option<Mark> {
        match (a, b) {
            (Some(a), Some(b)) if a.position > b.position => Some(a),
            (Some(a), Some(b)) if a.position == b.position && b.hash.is_none() => Some(a),
            (Some(_), Some(b)) => Some(b),
            (a, b) => a.or(b),
        }
    }
}

/// How a database compares with its high-water mark ([`check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkState {
    /// No mark, or the log holds the mark's entry (or passed it: an entry of a newer term).
    Clear,
    /// The log ends below the mark (positions compare term first): a restored backup, a copied
    /// data directory. Caught up once the log reaches the mark.
    Behind {
        /// The mark.
        mark: Mark,
    },
    /// The log holds another entry at the mark's sequence (another chain hash there), and
    /// nothing of a newer term than the mark's: another history than the one this device
    /// acknowledged — a copy of another device's data, a restored backup written to since.
    /// Catching up cannot pass it; only a leader's log of a newer term, or more entries
    /// applied from a leader on top of it (the chain checked), move the mark past it.
    Diverged {
        /// The mark.
        mark: Mark,
        /// The term of the log's entry at the mark's sequence.
        found_term: u64,
        /// The chain hash of the log's entry at the mark's sequence.
        found: ChainHash,
    },
}

impl MarkState {
    /// The log position below which a device in this state neither campaigns nor votes for a
    /// candidate ([`crate::Database::election_floor`]): none when clear, the mark when behind;
    /// when diverged, past every position of the mark's term (`(term, u64::MAX)`), so that the
    /// device does not campaign (its log ends in that term at most) and votes only for a
    /// candidate whose log ends in a newer term — written by a leader elected after the mark,
    /// which holds whatever was committed of it.
    pub fn floor(&self) -> LogPosition {
        match self {
            Self::Clear => LogPosition::default(),
            Self::Behind { mark } => mark.position,
            Self::Diverged { mark, .. } => {
                LogPosition { term: mark.position.term, sequence: u64::MAX }
            }
        }
    }

    /// The mark a device in this state is held behind (`LibraryStatus::behind_mark`), as
    /// `sequence@term`: `None` when clear; the mark when behind or diverged (either way the
    /// device neither campaigns nor votes for a log below [`Self::floor`]).
    pub fn held_behind(&self) -> Option<String> {
        match self {
            Self::Clear => None,
            Self::Behind { mark } | Self::Diverged { mark, .. } => Some(mark.position.to_string()),
        }
    }

    /// What differs when diverged (`LibraryStatus::mark_diverged`): the entry the log holds at
    /// the mark's sequence and the hash the mark names; `None` when clear or behind.
    pub fn divergence(&self) -> Option<String> {
        match self {
            Self::Diverged { mark, found_term, found } => Some(format!(
                "an entry of term {found_term}, hash {}, where the mark says {}",
                found.short(),
                mark.hash.map_or_else(|| "-".to_owned(), |h| h.short()),
            )),
            Self::Clear | Self::Behind { .. } => None,
        }
    }

    /// The whole state in one line, for logs: `None` when clear; the mark as `sequence@term`
    /// when behind; when diverged, that and what differs.
    pub fn describe(&self) -> Option<String> {
        let mark = self.held_behind()?;
        Some(match self.divergence() {
            Some(what) => format!(
                "{mark}, and its log holds another history there ({what}): it waits for a \
                 leader's log of a newer term"
            ),
            None => mark,
        })
    }
}

/// How a log whose last entry is `head` compares with `mark`; `at_mark` is the log's entry at
/// the mark's sequence (its term and chain hash), if it holds one. The order of the rules:
/// - no mark, or a head of a newer term than the mark's: clear (a newer term passes any mark
///   of an older one — its entries were written by a leader elected after the mark, which
///   holds everything committed before it);
/// - the mark has a hash and the log's entry at its sequence has another one: diverged;
/// - the head below the mark: behind;
/// - otherwise clear. A mark without a hash (an old mark file) is compared by position only,
///   as before the hash.
pub fn check(mark: Option<Mark>, head: LogHead, at_mark: Option<(u64, ChainHash)>) -> MarkState {
    let Some(mark) = mark else { return MarkState::Clear };
    if head.position.term > mark.position.term {
        return MarkState::Clear;
    }
    if let (Some(expected), Some((found_term, found))) = (mark.hash, at_mark) {
        if found != expected {
            return MarkState::Diverged { mark, found_term, found };
        }
    }
    if head.position < mark.position {
        return MarkState::Behind { mark };
    }
    MarkState::Clear
}

/// The fsynced high-water mark's file (`<db>.mark`), kept outside the database like the
/// election record, written durably and only ever raised ([`crate::Database::raise_mark`]).
pub fn mark_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".mark");
    PathBuf::from(name)
}

/// The acknowledgement mark's file (`<db>.mark.ack`): the high-water mark kept at every
/// acknowledgement — the last position this device reported holding (a follower's applied
/// batch) or committed as a leader under `synchronous = FULL` — written before the
/// acknowledgement leaves, cheaply: atomic against a process crash (a temporary file renamed
/// over it), not fsynced. It is only ever written for a position the database already holds
/// on disk, so a power loss can take it back (to an older mark, or a torn file that reads as
/// none) but never leave it ahead of the database. The device's mark is the higher of the two
/// files ([`crate::Database::mark`]); the fsynced one ([`mark_path`]) follows at heartbeats.
pub fn ack_mark_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".mark.ack");
    PathBuf::from(name)
}

/// The first line of a mark file without a hash (written before the hash chain; still read).
const MARK_HEADER_1: &str = "lsync high-water mark 1";
/// The first line of a mark file with the chain hash.
const MARK_HEADER_2: &str = "lsync high-water mark 2";

/// Reads the high-water mark at `path`; `None` if there is none yet.
///
/// # Errors
/// [`StorageError::Corrupt`] for a file that is not a mark; [`StorageError::Io`].
pub fn read_mark(path: &Path) -> Result<Option<Mark>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    parse_mark(&text)
        .map(Some)
        .ok_or_else(|| StorageError::Corrupt("high-water mark: not a mark file".to_owned()))
}

/// Writes the high-water mark at `path` durably and atomically (temporary file, fsync, rename,
/// directory fsync), as the election record is written.
///
/// # Errors
/// [`StorageError::Io`].
pub fn write_mark(path: &Path, mark: impl Into<Mark>) -> Result<()> {
    write_durably(path, &mark_text(mark.into()))
}

/// Reads the acknowledgement mark at `path`: `None` if there is none, or if it cannot be
/// read (what a power loss may leave of a file written without an fsync; the fsynced mark
/// still holds).
pub fn read_ack_mark(path: &Path) -> Option<Mark> {
    std::fs::read_to_string(path).ok().as_deref().and_then(parse_mark)
}

/// Writes the acknowledgement mark at `path` (see [`ack_mark_path`]): a temporary file, then
/// a rename over the old one; no fsync.
///
/// # Errors
/// [`StorageError::Io`].
pub fn write_ack_mark(path: &Path, mark: impl Into<Mark>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, mark_text(mark.into()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A mark file: the header, `position <term> <sequence>`, and, in version 2, `hash <hex>` or
/// `hash -` (not known). Anything else is not a mark.
fn parse_mark(text: &str) -> Option<Mark> {
    let mut lines = text.lines();
    let version = match lines.next()? {
        MARK_HEADER_1 => 1,
        MARK_HEADER_2 => 2,
        _ => return None,
    };
    let (term, sequence) = lines.next()?.strip_prefix("position ")?.split_once(' ')?;
    let (Ok(term), Ok(sequence)) = (term.parse::<u64>(), sequence.parse::<u64>()) else {
        return None;
    };
    let hash = match version {
        1 => None,
        _ => match lines.next()?.strip_prefix("hash ")? {
            "-" => None,
            hex => Some(ChainHash::from_hex(hex)?),
        },
    };
    if lines.next().is_some() {
        return None;
    }
    Some(Mark { position: LogPosition { term, sequence }, hash })
}

fn mark_text(mark: Mark) -> String {
    let hash = mark.hash.map_or_else(|| "-".to_owned(), |h| h.to_string());
    format!(
        "{MARK_HEADER_2}\nposition {} {}\nhash {hash}\n",
        mark.position.term, mark.position.sequence
    )
}

/// The configuration this device last knew: the newest configuration entry committed or
/// applied here, kept in `<db>.mark.members` beside the mark files ([`members_path`]), so that
/// a database put back to an older copy (whose configuration lacks the devices that joined
/// since) can still tell who the members are ([`admitted_while_behind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedConfiguration {
    /// The position of its configuration entry; term 0 when this device's log did not hold
    /// the entry when it was written (a joining device's configuration, installed before its
    /// log reached it).
    pub position: LogPosition,
    /// The configuration.
    pub configuration: Configuration,
}

impl MarkedConfiguration {
    /// Whether a configuration entry at `a` is older than one at `b`: by position (term
    /// first) when both terms are known, by sequence when either is not (term 0).
    pub fn older(a: LogPosition, b: LogPosition) -> bool {
        if a.term == 0 || b.term == 0 {
            a.sequence < b.sequence
        } else {
            a < b
        }
    }
}

/// The members admitted beyond the configuration in effect (`in_effect`: its entry's position
/// and the configuration) — the one rule of docs/architecture.md, "Restores are detected":
/// while the database is behind its mark or holds another history there (`state` not
/// [`MarkState::Clear`]) and its configuration is older than the one this device last knew
/// (`marked`, [`MarkedConfiguration::older`]), the members of the marked configuration that
/// the configuration in effect lacks, in device order. They are let in as members to accept a
/// leader's messages, to fetch from it and to answer it, so that the device catches up; the
/// device still neither campaigns nor votes below its mark (the election's floor). Empty
/// otherwise: once caught up the database's own configuration rules, and a peer in neither
/// configuration is never admitted.
pub fn admitted_while_behind(
    state: &MarkState,
    in_effect: (LogPosition, &Configuration),
    marked: Option<&MarkedConfiguration>,
) -> Vec<Member> {
    let (position, configuration) = in_effect;
    let Some(marked) = marked else { return Vec::new() };
    if *state == MarkState::Clear || !MarkedConfiguration::older(position, marked.position) {
        return Vec::new();
    }
    marked
        .configuration
        .members
        .iter()
        .filter(|m| configuration.member(m.device_id).is_none())
        .cloned()
        .collect()
}

/// The file of the configuration this device last knew (`<db>.mark.members`), written
/// durably ([`write_members`]) whenever a newer configuration is in effect here
/// ([`crate::Database::mark_configuration`]).
pub fn members_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".mark.members");
    PathBuf::from(name)
}

/// The first line of a members file.
const MEMBERS_HEADER_1: &str = "lsync marked configuration 1";

/// Reads the configuration at `path`; `None` if there is none (a device of a version before
/// the file: no member is admitted beyond the database's configuration, as before).
///
/// # Errors
/// [`StorageError::Corrupt`] for a file that is not one; [`StorageError::Io`].
pub fn read_members(path: &Path) -> Result<Option<MarkedConfiguration>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    parse_members(&text).map(Some).ok_or_else(|| {
        StorageError::Corrupt("marked configuration: not a configuration file".to_owned())
    })
}

/// Writes `marked` at `path` durably and atomically (temporary file, fsync, rename, directory
/// fsync), as the fsynced mark is written.
///
/// # Errors
/// [`StorageError::Io`].
pub fn write_members(path: &Path, marked: &MarkedConfiguration) -> Result<()> {
    let json = serde_json::to_string(&marked.configuration)
        .map_err(|e| StorageError::Corrupt(format!("marked configuration: {e}")))?;
    let text = format!(
        "{MEMBERS_HEADER_1}\nposition {} {}\n{json}\n",
        marked.position.term, marked.position.sequence
    );
    write_durably(path, &text)
}

/// A members file: the header, `position <term> <sequence>`, and the configuration as one
/// line of JSON (docs/protocol.md's `Configuration`: `feature_version` and `members`).
fn parse_members(text: &str) -> Option<MarkedConfiguration> {
    let mut lines = text.lines();
    if lines.next()? != MEMBERS_HEADER_1 {
        return None;
    }
    let (term, sequence) = lines.next()?.strip_prefix("position ")?.split_once(' ')?;
    let (Ok(term), Ok(sequence)) = (term.parse::<u64>(), sequence.parse::<u64>()) else {
        return None;
    };
    let configuration = serde_json::from_str::<Configuration>(lines.next()?).ok()?;
    if lines.next().is_some() {
        return None;
    }
    Some(MarkedConfiguration { position: LogPosition { term, sequence }, configuration })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(term: u64, sequence: u64) -> LogPosition {
        LogPosition { term, sequence }
    }

    fn hash(n: u8) -> ChainHash {
        ChainHash([n; 32])
    }

    fn head(term: u64, sequence: u64, h: u8) -> LogHead {
        LogHead { position: pos(term, sequence), hash: hash(h) }
    }

    fn mark(term: u64, sequence: u64, h: u8) -> Mark {
        Mark { position: pos(term, sequence), hash: Some(hash(h)) }
    }

    fn member(n: u128) -> Member {
        Member {
            device_id: uuid::Uuid::from_u128(n),
            peer_id: format!("peer-{n}"),
            addresses: vec![format!("/ip4/127.0.0.1/tcp/{}", 7000 + n)],
            name: format!("device {n}"),
            role: lsync_protocol::MemberRole::Voter,
            preference: lsync_protocol::RolePreference::Auto,
        }
    }

    fn configuration(members: &[u128]) -> Configuration {
        Configuration::new(
            lsync_protocol::FEATURE_VERSION,
            members.iter().map(|n| member(*n)).collect(),
        )
    }

    /// The founder alone at sequence 1 of term 1; the three of them at sequence 40 of term 2.
    fn founder_and_marked() -> (Configuration, MarkedConfiguration) {
        let marked =
            MarkedConfiguration { position: pos(2, 40), configuration: configuration(&[1, 2, 3]) };
        (configuration(&[1]), marked)
    }

    #[test]
    fn a_device_behind_its_mark_admits_the_marked_members_its_configuration_lacks() {
        let (alone, marked) = founder_and_marked();
        let behind = MarkState::Behind { mark: mark(2, 60, 7) };
        assert_eq!(
            admitted_while_behind(&behind, (pos(1, 1), &alone), Some(&marked)),
            vec![member(2), member(3)]
        );
    }

    #[test]
    fn a_device_holding_another_history_at_its_mark_admits_them_too() {
        let (alone, marked) = founder_and_marked();
        let diverged = MarkState::Diverged { mark: mark(2, 60, 7), found_term: 1, found: hash(8) };
        assert_eq!(
            admitted_while_behind(&diverged, (pos(1, 1), &alone), Some(&marked)),
            vec![member(2), member(3)]
        );
    }

    #[test]
    fn a_device_caught_up_past_its_mark_admits_no_one_beyond_its_configuration() {
        let (alone, marked) = founder_and_marked();
        assert_eq!(
            admitted_while_behind(&MarkState::Clear, (pos(1, 1), &alone), Some(&marked)),
            Vec::<Member>::new()
        );
    }

    #[test]
    fn a_configuration_as_new_as_the_marked_one_rules_even_below_the_mark() {
        let (_, marked) = founder_and_marked();
        let behind = MarkState::Behind { mark: mark(2, 60, 7) };
        // the device applied the marked entry again (or a newer one) on its way to the mark:
        // its own configuration says who the members are, a device removed since included
        let two = configuration(&[1, 2]);
        for at in [pos(2, 40), pos(2, 45), pos(3, 10)] {
            assert_eq!(
                admitted_while_behind(&behind, (at, &two), Some(&marked)),
                Vec::<Member>::new(),
                "{at}"
            );
        }
    }

    #[test]
    fn without_a_marked_configuration_no_one_is_admitted_as_before() {
        let (alone, _) = founder_and_marked();
        let behind = MarkState::Behind { mark: mark(2, 60, 7) };
        assert_eq!(admitted_while_behind(&behind, (pos(1, 1), &alone), None), Vec::<Member>::new());
    }

    #[test]
    fn a_member_of_both_configurations_is_not_admitted_twice() {
        let (_, marked) = founder_and_marked();
        let behind = MarkState::Behind { mark: mark(2, 60, 7) };
        // device 4 is in the database's configuration only (it is a member there already);
        // device 3 in both: only device 2 is admitted beyond it
        let in_effect = configuration(&[1, 3, 4]);
        assert_eq!(
            admitted_while_behind(&behind, (pos(1, 9), &in_effect), Some(&marked)),
            vec![member(2)]
        );
    }

    #[test]
    fn configurations_compare_by_position_and_by_sequence_when_a_term_is_not_known() {
        assert!(MarkedConfiguration::older(pos(1, 50), pos(2, 40)));
        assert!(!MarkedConfiguration::older(pos(2, 40), pos(1, 50)));
        assert!(!MarkedConfiguration::older(pos(2, 40), pos(2, 40)));
        assert!(MarkedConfiguration::older(pos(0, 39), pos(2, 40)));
        assert!(!MarkedConfiguration::older(pos(0, 41), pos(2, 40)));
        assert!(!MarkedConfiguration::older(pos(2, 40), pos(0, 40)));
    }

    #[test]
    fn a_marked_configuration_round_trips_and_a_file_that_is_not_one_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = members_path(&dir.path().join("library.db"));
        assert_eq!(path.file_name().unwrap(), "library.db.mark.members");
        assert_eq!(read_members(&path).unwrap(), None);
        let (_, marked) = founder_and_marked();
        write_members(&path, &marked).unwrap();
        assert_eq!(read_members(&path).unwrap(), Some(marked));
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "no temporary file is left behind");
        for text in [
            "",
            "lsync marked configuration 1\nposition 2 40\n",
            "lsync marked configuration 1\nposition 2\n{}\n",
            "lsync marked configuration 2\nposition 2 40\n{\"feature_version\":2,\"members\":[]}\n",
            "lsync high-water mark 2\nposition 3 120\nhash -\n",
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(matches!(read_members(&path), Err(StorageError::Corrupt(_))), "{text:?}");
        }
    }

    #[test]
    fn a_mark_with_its_hash_round_trips_through_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("library.db");
        let (path, ack) = (mark_path(&db), ack_mark_path(&db));
        assert_eq!(path.file_name().unwrap(), "library.db.mark");
        assert_eq!(ack.file_name().unwrap(), "library.db.mark.ack");
        assert_eq!(read_mark(&path).unwrap(), None);
        assert_eq!(read_ack_mark(&ack), None);
        write_mark(&path, mark(3, 120, 7)).unwrap();
        write_ack_mark(&ack, mark(3, 121, 8)).unwrap();
        assert_eq!(read_mark(&path).unwrap(), Some(mark(3, 120, 7)));
        assert_eq!(read_ack_mark(&ack), Some(mark(3, 121, 8)));
        // a position alone is written with an unknown hash
        write_mark(&path, pos(3, 122)).unwrap();
        assert_eq!(read_mark(&path).unwrap(), Some(Mark { position: pos(3, 122), hash: None }));
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 2, "no temporary file is left behind");
    }

    #[test]
    fn a_mark_file_of_the_first_version_is_read_without_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("library.db.mark");
        std::fs::write(&path, "lsync high-water mark 1\nposition 3 120\n").unwrap();
        assert_eq!(read_mark(&path).unwrap(), Some(Mark { position: pos(3, 120), hash: None }));
        assert_eq!(read_ack_mark(&path), Some(Mark { position: pos(3, 120), hash: None }));
    }

    #[test]
    fn a_file_that_is_not_a_mark_is_corrupt_and_a_torn_ack_mark_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("library.db.mark");
        let full = mark_text(mark(3, 120, 7));
        for text in [
            "",
            "lsync high-water mark 1\nposition 3\n",
            "lsync high-water mark 1\n",
            "lsync high-water mark 1\nposition 3 120\nhash -\n",
            "lsync high-water mark 2\nposition 3 120\n",
            "lsync high-water mark 2\nposition 3 120\nhash 12ab\n",
            "lsync high-water mark 3\nposition 3 120\nhash -\n",
            &full[..full.len() - 10],
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(matches!(read_mark(&path), Err(StorageError::Corrupt(_))), "{text:?}");
            assert_eq!(read_ack_mark(&path), None, "{text:?}");
        }
    }

    #[test]
    fn the_higher_mark_wins_and_at_one_position_the_one_with_a_hash() {
        let bare = Mark { position: pos(3, 120), hash: None };
        assert_eq!(Mark::higher(None, None), None);
        assert_eq!(Mark::higher(Some(bare), None), Some(bare));
        assert_eq!(Mark::higher(None, Some(bare)), Some(bare));
        assert_eq!(Mark::higher(Some(mark(3, 121, 1)), Some(bare)), Some(mark(3, 121, 1)));
        assert_eq!(Mark::higher(Some(bare), Some(mark(4, 2, 1))), Some(mark(4, 2, 1)));
        assert_eq!(Mark::higher(Some(mark(3, 120, 1)), Some(bare)), Some(mark(3, 120, 1)));
        assert_eq!(Mark::higher(Some(bare), Some(mark(3, 120, 1))), Some(mark(3, 120, 1)));
        assert_eq!(
            Mark::higher(Some(mark(3, 120, 1)), Some(mark(3, 120, 2))),
            Some(mark(3, 120, 2))
        );
    }

    #[test]
    fn no_mark_or_the_marks_entry_in_the_log_is_clear() {
        assert_eq!(check(None, head(3, 5, 1), None), MarkState::Clear);
        assert_eq!(
            check(Some(mark(3, 120, 7)), head(3, 120, 7), Some((3, hash(7)))),
            MarkState::Clear
        );
        assert_eq!(
            check(Some(mark(3, 120, 7)), head(3, 130, 9), Some((3, hash(7)))),
            MarkState::Clear
        );
    }

    #[test]
    fn a_log_that_ends_below_the_mark_is_behind() {
        let m = mark(3, 120, 7);
        assert_eq!(check(Some(m), head(3, 100, 1), None), MarkState::Behind { mark: m });
        assert_eq!(check(Some(m), head(2, 150, 1), None), MarkState::Behind { mark: m });
        assert_eq!(check(Some(m), LogHead::default(), None), MarkState::Behind { mark: m });
    }

    #[test]
    fn another_entry_at_the_marks_sequence_is_a_divergence_even_past_the_mark() {
        let m = mark(3, 120, 7);
        // a restore written to since in the same term: past the mark by position
        let diverged = MarkState::Diverged { mark: m, found_term: 3, found: hash(8) };
        assert_eq!(check(Some(m), head(3, 130, 9), Some((3, hash(8)))), diverged);
        assert_eq!(check(Some(m), head(3, 120, 8), Some((3, hash(8)))), diverged);
        // another history of an older term there (a copy of another device's data)
        assert_eq!(
            check(Some(m), head(3, 125, 9), Some((2, hash(8)))),
            MarkState::Diverged { mark: m, found_term: 2, found: hash(8) }
        );
        assert_eq!(diverged.floor(), pos(3, u64::MAX));
        assert!(diverged.describe().unwrap().starts_with("120@3, and its log holds another"));
        // status: held behind the mark, and what differs in a field of its own
        assert_eq!(diverged.held_behind().as_deref(), Some("120@3"));
        let what = diverged.divergence().unwrap();
        assert!(what.starts_with("an entry of term 3, hash "), "{what}");
    }

    #[test]
    fn a_log_of_a_newer_term_passes_any_mark_of_an_older_one() {
        let m = mark(3, 120, 7);
        assert_eq!(check(Some(m), head(4, 118, 1), None), MarkState::Clear);
        assert_eq!(check(Some(m), head(4, 130, 1), Some((4, hash(8)))), MarkState::Clear);
    }

    #[test]
    fn a_mark_without_a_hash_is_compared_by_position_only() {
        let m = Mark { position: pos(3, 120), hash: None };
        assert_eq!(check(Some(m), head(3, 130, 1), Some((3, hash(8)))), MarkState::Clear);
        assert_eq!(check(Some(m), head(3, 110, 1), None), MarkState::Behind { mark: m });
        assert_eq!(MarkState::Behind { mark: m }.floor(), pos(3, 120));
        assert_eq!(MarkState::Behind { mark: m }.describe().as_deref(), Some("120@3"));
        assert_eq!(MarkState::Behind { mark: m }.held_behind().as_deref(), Some("120@3"));
        assert_eq!(MarkState::Behind { mark: m }.divergence(), None);
        assert_eq!(MarkState::Clear.held_behind(), None);
        assert_eq!(MarkState::Clear.floor(), LogPosition::default());
    }
}
