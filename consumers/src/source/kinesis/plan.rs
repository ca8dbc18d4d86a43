//! Lease planning: which leases this worker should take, and whether to steal
//! one, given the lease table as last read. Pure, so the balancing rules are
//! tested without DynamoDB.
//!
//! The rules follow the Kinesis Client Library: a lease is *available* when it
//! has no owner or its counter has not moved for the failover time (its owner
//! stopped renewing). Each worker aims for a fair share, `ceil(eligible /
//! workers)`, takes available leases up to it, and when none are available
//! steals one lease per round from the most loaded worker, only if that
//! worker holds more than the fair share, so a balanced table never churns.
//! A child shard is eligible only once all its parents reached SHARD_END (or
//! their leases were cleaned up), so records are read parents first.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::checkpoint::{is_initial_position, is_shard_end};

/// A lease as read from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub key: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: String,
    pub parents: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Available leases to take, in key order.
    pub take: Vec<String>,
    /// A lease to steal from an overloaded worker.
    pub steal: Option<String>,
    /// Finished leases whose children all started: may be deleted.
    pub cleanup: Vec<String>,
    pub fair_share: usize,
    pub eligible: usize,
    pub workers: usize,
}

/// Plans one round for worker `me`. `expired` holds the keys whose counter
/// has not moved for the failover time.
pub fn plan(me: &str, leases: &[LeaseView], expired: &HashSet<String>) -> Plan {
    let by_key: HashMap<&str, &LeaseView> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let finished = |k: &str| by_key.get(k).is_none_or(|l| is_shard_end(&l.checkpoint));
    let eligible: Vec<&LeaseView> = leases
        .iter()
        .filter(|l| !is_shard_end(&l.checkpoint) && l.parents.iter().all(|p| finished(p)))
        .collect();
    let available = |l: &LeaseView| l.owner.is_none() || expired.contains(&l.key);

    let mut load: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    load.entry(me).or_default();
    for l in &eligible {
        if let Some(owner) = &l.owner {
            // An expired lease counts for nobody, even when it names `me`
            // (a previous run of this worker id that was killed).
            if !available(l) {
                load.entry(owner.as_str()).or_default().push(&l.key);
            }
        }
    }
    let workers = load.len();
    let fair_share = eligible.len().div_ceil(workers.max(1));
    let mine = load.get(me).map_or(0, Vec::len);

    let mut take: Vec<String> = eligible
        .iter()
        .filter(|l| available(l))
        .map(|l| l.key.clone())
        .collect();
    take.sort();
    take.truncate(fair_share.saturating_sub(mine));

    let mut steal = None;
    if mine + take.len() < fair_share {
        let most_loaded = load
            .iter()
            .filter(|(owner, _)| **owner != me)
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)));
        if let Some((_, keys)) = most_loaded {
            if keys.len() > fair_share {
                steal = keys.iter().max().map(|k| k.to_string());
            }
        }
    }

    let cleanup = leases
        .iter()
        .filter(|l| is_shard_end(&l.checkpoint))
        .filter(|l| {
            let mut children = leases
                .iter()
                .filter(|c| c.parents.contains(&l.key))
                .peekable();
            children.peek().is_some() && children.all(|c| !is_initial_position(&c.checkpoint))
        })
        .map(|l| l.key.clone())
        .collect();

    Plan {
        take,
        steal,
        cleanup,
        fair_share,
        eligible: eligible.len(),
        workers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kinesis::checkpoint::Checkpoint;

    fn lease(key: &str, owner: Option<&str>) -> LeaseView {
        LeaseView {
            key: key.into(),
            owner: owner.map(Into::into),
            counter: 1,
            checkpoint: Checkpoint::TrimHorizon.to_string(),
            parents: vec![],
        }
    }

    fn shards(n: usize, owner: impl Fn(usize) -> Option<&'static str>) -> Vec<LeaseView> {
        (0..n)
            .map(|i| lease(&format!("shardId-{i:012}"), owner(i)))
            .collect()
    }

    #[test]
    fn a_lone_worker_takes_everything() {
        let p = plan("a", &shards(8, |_| None), &HashSet::new());
        assert_eq!(p.take.len(), 8);
        assert_eq!(p.steal, None);
    }

    #[test]
    fn a_new_worker_steals_one_at_a_time_until_balanced() {
        let mut leases = shards(8, |_| Some("a"));
        let mut rounds = 0;
        loop {
            let p = plan("b", &leases, &HashSet::new());
            match p.steal {
                Some(k) => leases.iter_mut().find(|l| l.key == k).unwrap().owner = Some("b".into()),
                None => break,
            }
            rounds += 1;
            assert!(rounds < 10);
        }
        let b = leases
            .iter()
            .filter(|l| l.owner.as_deref() == Some("b"))
            .count();
        assert_eq!((rounds, b), (4, 4));
        // and the first worker, now balanced, wants nothing
        assert_eq!(
            plan("a", &leases, &HashSet::new()),
            Plan {
                fair_share: 4,
                eligible: 8,
                workers: 2,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn three_workers_on_eight_shards_do_not_churn() {
        let owners = ["a", "a", "a", "b", "b", "b", "c", "c"];
        let leases = shards(8, |i| Some(owners[i]));
        for me in ["a", "b", "c"] {
            let p = plan(me, &leases, &HashSet::new());
            assert_eq!((p.take.len(), p.steal.clone()), (0, None), "{me}");
            assert_eq!(p.fair_share, 3);
        }
    }

    #[test]
    fn expired_leases_are_taken_and_their_owner_stops_counting() {
        let owners = ["a", "a", "a", "a", "b", "b", "b", "b"];
        let leases = shards(8, |i| Some(owners[i]));
        let expired: HashSet<String> = leases[4..].iter().map(|l| l.key.clone()).collect();
        let p = plan("a", &leases, &expired);
        assert_eq!(p.workers, 1, "b stopped renewing");
        assert_eq!(p.take.len(), 4);
    }

    #[test]
    fn a_restarted_worker_takes_back_its_expired_leases() {
        // `a` was killed and restarted under the same id: the table still
        // names it, but it holds nothing and the counters stopped.
        let leases = shards(4, |i| Some(if i < 2 { "a" } else { "b" }));
        let p = plan("a", &leases, &HashSet::new());
        assert!(p.take.is_empty(), "not before they expire: {p:?}");
        let expired: HashSet<String> = leases[..2].iter().map(|l| l.key.clone()).collect();
        let p = plan("a", &leases, &expired);
        assert_eq!(p.take, vec![leases[0].key.clone(), leases[1].key.clone()]);
        assert_eq!((p.workers, p.fair_share, p.steal), (2, 2, None));
    }

    #[test]
    fn children_wait_for_their_parents() {
        let mut leases = shards(1, |_| Some("a"));
        let mut child = lease("shardId-000000000001", None);
        child.parents = vec![leases[0].key.clone()];
        leases.push(child);
        let p = plan("b", &leases, &HashSet::new());
        assert!(p.take.is_empty(), "parent still open: {p:?}");
        leases[0].checkpoint = Checkpoint::ShardEnd.to_string();
        let p = plan("b", &leases, &HashSet::new());
        assert_eq!(p.take, vec!["shardId-000000000001".to_string()]);
        assert!(p.cleanup.is_empty(), "child has not started reading yet");
        leases[1].owner = Some("b".into());
        leases[1].checkpoint = "49590338271490256608559692538361571095921575989136588898".into();
        assert_eq!(
            plan("b", &leases, &HashSet::new()).cleanup,
            vec![leases[0].key.clone()]
        );
        // a merge: both parents must end
        let mut merged = lease("shardId-000000000009", None);
        merged.parents = vec!["shardId-000000000001".into(), "shardId-000000000007".into()];
        leases.push(merged);
        leases.push(lease("shardId-000000000007", Some("c")));
        leases[1].checkpoint = Checkpoint::ShardEnd.to_string();
        assert!(!plan("b", &leases, &HashSet::new())
            .take
            .contains(&"shardId-000000000009".to_string()));
    }
}
