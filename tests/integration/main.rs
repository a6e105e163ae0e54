//! Cross-device integration tests: real nodes, libp2p on 127.0.0.1, temporary SQLite files.

mod conflicts;
mod election;
mod faults;
mod fixture;
mod lease;
mod membership;
mod normal_sync;
mod replication;
mod security;
mod writes;
