//! What the SyncService's watchdog restarts, decided without I/O (docs/architecture.md,
//! "Supervision"). Every [`WATCHDOG_INTERVAL`](super::WATCHDOG_INTERVAL) the service looks at
//! each actor and task it started — is the actor's mailbox still open, is the task still
//! running — hands what it saw to [`supervise`] and performs the returned [`Action`]s in order.
//!
//! Rules:
//! - one [`Action::Count`] per dead child, of its kind, first (the restarts metric);
//! - a dead election actor: a new one from the persisted state;
//! - a dead role actor (the leader actor, a link actor, the follower actor): every actor of
//!   the role is stopped and the role started afresh, once however many died — the leader's
//!   actors share one leadership (its log cache, the published commit sequence), so one is
//!   never restarted alone;
//! - a dead proposer task: a new task, which resumes from the outbox; the role is left alone.

use crate::metrics::Child;

/// What the watchdog does, in the order returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Count one restart of this kind.
    Count(Child),
    /// Start a new election actor from the persisted state.
    RestartElection,
    /// Stop every actor of the role and start them again from the persisted state.
    RestartRole,
    /// Start the proposer's task again.
    RestartProposer,
}

/// The actions for `seen`: every child running, with whether it is still alive.
pub fn supervise(seen: &[(Child, bool)]) -> Vec<Action> {
    let dead: Vec<Child> = seen.iter().filter(|(_, alive)| !alive).map(|(c, _)| *c).collect();
    let mut out: Vec<Action> = dead.iter().map(|c| Action::Count(*c)).collect();
    if dead.contains(&Child::Election) {
        out.push(Action::RestartElection);
    }
    if dead.iter().any(|c| matches!(c, Child::Leader | Child::Link | Child::Follower)) {
        out.push(Action::RestartRole);
    }
    if dead.contains(&Child::Proposer) {
        out.push(Action::RestartProposer);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_done_while_every_child_lives() {
        let seen = [(Child::Election, true), (Child::Follower, true), (Child::Proposer, true)];
        assert_eq!(supervise(&seen), []);
    }

    #[test]
    fn a_dead_election_actor_is_counted_and_started_again() {
        let seen = [(Child::Election, false), (Child::Follower, true), (Child::Proposer, true)];
        assert_eq!(supervise(&seen), [Action::Count(Child::Election), Action::RestartElection]);
    }

    #[test]
    fn a_dead_follower_actor_restarts_the_role() {
        let seen = [(Child::Election, true), (Child::Follower, false), (Child::Proposer, true)];
        assert_eq!(supervise(&seen), [Action::Count(Child::Follower), Action::RestartRole]);
    }

    #[test]
    fn a_dead_link_restarts_the_whole_leader_role() {
        let seen = [(Child::Leader, true), (Child::Link, true), (Child::Link, false)];
        assert_eq!(supervise(&seen), [Action::Count(Child::Link), Action::RestartRole]);
    }

    #[test]
    fn each_dead_child_is_counted_and_the_role_restarts_once() {
        let seen = [(Child::Leader, false), (Child::Link, false), (Child::Link, false)];
        assert_eq!(
            supervise(&seen),
            [
                Action::Count(Child::Leader),
                Action::Count(Child::Link),
                Action::Count(Child::Link),
                Action::RestartRole
            ]
        );
    }

    #[test]
    fn a_dead_proposer_task_is_started_again_and_the_role_left_alone() {
        let seen = [(Child::Election, true), (Child::Follower, true), (Child::Proposer, false)];
        assert_eq!(supervise(&seen), [Action::Count(Child::Proposer), Action::RestartProposer]);
    }

    #[test]
    fn counts_come_before_the_restarts_in_a_fixed_order() {
        let seen = [(Child::Proposer, false), (Child::Follower, false), (Child::Election, false)];
        assert_eq!(
            supervise(&seen),
            [
                Action::Count(Child::Proposer),
                Action::Count(Child::Follower),
                Action::Count(Child::Election),
                Action::RestartElection,
                Action::RestartRole,
                Action::RestartProposer
            ]
        );
    }
}
