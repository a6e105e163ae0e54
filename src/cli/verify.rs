//! `lsync verify`: checks a library's database read-only, whether or not its daemon runs
//! (docs/operations.md, "Verifying a library"). Exit status 0 only if nothing is wrong; else 1,
//! naming the first bad sequence.

use std::path::Path;
use std::process::ExitCode;

use lsync::{ModelRegistry, Node};
use uuid::Uuid;

/// Verifies `library` (default: the only library of the data directory) and prints the report.
pub fn verify(dir: &Path, library: Option<Uuid>) -> anyhow::Result<ExitCode> {
    let library = match library {
        Some(id) => id,
        None => only_library(dir)?,
    };
    let path = Node::library_file(dir, library);
    let report = Node::verify(dir, library, &ModelRegistry::with_builtin())
        .map_err(|e| anyhow::anyhow!("cannot verify {}: {e}", path.display()))?;
    println!("library {library} ({})", path.display());
    println!("log: {} entries, head {} {}", report.entries, report.head.position, report.head.hash);
    println!("tables compared with the replay of the log: {}", list(&report.tables_checked));
    for excluded in &report.tables_excluded {
        println!("table not compared: {} ({})", excluded.table, excluded.reason);
    }
    if !report.unregistered_models.is_empty() {
        println!(
            "model types with no handler in this build, not replayed: {}",
            list(&report.unregistered_models)
        );
    }
    if report.pending_proposals > 0 {
        println!(
            "pending proposals of this device applied over the replay: {}",
            report.pending_proposals
        );
    }
    if report.is_ok() {
        println!("OK: sequences gapless, hash chain intact, tables equal to the replay");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        println!("BAD {problem}");
    }
    if report.more_problems > 0 {
        println!("... and {} more", report.more_problems);
    }
    match report.first_bad_sequence() {
        Some(sequence) => eprintln!("verify failed: first bad sequence {sequence}"),
        None => eprintln!(
            "verify failed: model rows that no log entry wrote, or pending changes whose \
             committed rows are wrong (see above)"
        ),
    }
    Ok(ExitCode::FAILURE)
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// The only library database in `dir/libraries`.
fn only_library(dir: &Path) -> anyhow::Result<Uuid> {
    let libraries = dir.join("libraries");
    let mut found = Vec::new();
    let entries = std::fs::read_dir(&libraries)
        .map_err(|e| anyhow::anyhow!("no libraries in {}: {e}", libraries.display()))?;
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".db").and_then(|stem| stem.parse::<Uuid>().ok()) {
            found.push(id);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => anyhow::bail!("no library in {}", libraries.display()),
        _ => anyhow::bail!(
            "{} libraries in {}: choose one with --library",
            found.len(),
            libraries.display()
        ),
    }
}
