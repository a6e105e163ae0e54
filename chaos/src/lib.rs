//! `lsync-chaos`: real `lsync run` daemons on 127.0.0.1 under a seeded nemesis — kill -9,
//! SIGSTOP/SIGCONT, partitions and one-way partitions through a loopback proxy, restarts on
//! other ports, restores of an older copy of a database — while writes with unique ids go
//! through the control API and the CLI; at the end every device's database is read and
//! checked against every write's outcome. docs/testing.md says how to run it and read it.
//!
//! Layout:
//! - [`run`]: one run, from `lsync init` to the summary (the orchestration);
//! - [`nemesis`]: the seeded choice of each cycle's fault (pure);
//! - [`daemon`]: one device's process: start, kill, pause, stop, copy its database;
//! - [`proxy`] and [`procnet`]: the network between devices, and who dialled whom;
//! - [`workload`]: the writes, their outcomes (acknowledged, refused, unknown);
//! - [`dbread`] and [`checker`]: reading the databases, and the oracle (pure).

#![forbid(unsafe_code)]

pub mod checker;
pub mod daemon;
pub mod dbread;
pub mod nemesis;
pub mod procnet;
pub mod proxy;
pub mod run;
pub mod workload;
