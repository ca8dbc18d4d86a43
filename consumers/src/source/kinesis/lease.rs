//! The lease table in DynamoDB, with the Kinesis Client Library's schema:
//! `leaseKey` (shard id), `leaseOwner`, `leaseCounter`, `checkpoint`,
//! `checkpointSubSequenceNumber`, `ownerSwitchesSinceCheckpoint`,
//! `parentShardId` (a string set). Every change is a conditional write, so
//! two workers can never both believe they own a shard past one renewal.
//!
//! Attributes of our own: `sshwardenReplay` on a finished lease (JSON, see
//! [`ReplayFrom`]) says which records its children must re-read to rebuild
//! the windows that were still open when it reached SHARD_END;
//! `sshwardenEventTime` is the engine's event time at the checkpoint; and
//! `sshwardenTake`, a random token written by every take, fences the writes
//! of a reader (checkpoint, SHARD_END, release) to the take that started it.
//!
//! Why a token and not the owner alone, nor the counter: renewals are
//! conditional on owner and counter, and every take bumps the counter, so a
//! stale renewal always fails. A checkpoint conditional on the owner alone
//! also fails once another worker took the lease, but not when the same
//! worker id took it again: a process restarted under a fixed worker id
//! while its predecessor hangs (paused, partitioned) would let the
//! predecessor's reader overwrite the new reader's checkpoint when it wakes.
//! The counter cannot fence that either: the owner's own renewals move it
//! every tick, so a reader would race its coordinator. The take token moves
//! only on a take.

use std::collections::HashMap;

use anyhow::{bail, Context};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;

use super::checkpoint::Checkpoint;
use super::plan::LeaseView;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: String,
    pub owner_switches: u64,
    pub parents: Vec<String>,
    /// On a finished lease: what to replay to rebuild its open windows.
    pub replay: Vec<ReplayFrom>,
    /// The shard engine's event time at the checkpoint.
    pub event_time_ms: Option<i64>,
    /// Written by the take that gave the lease to its owner (`None` on a
    /// lease never taken by this version).
    pub take_token: Option<String>,
}

/// A stretch of a closed shard to re-read: the records after `after` (a
/// sequence number, or an initial position such as `TRIM_HORIZON`) up to
/// the shard's end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplayFrom {
    pub shard: String,
    pub after: String,
}

const REPLAY: &str = "sshwardenReplay";
const EVENT_TIME: &str = "sshwardenEventTime";
const TAKE: &str = "sshwardenTake";

impl Lease {
    pub fn view(&self) -> LeaseView {
        LeaseView {
            key: self.key.clone(),
            owner: self.owner.clone(),
            counter: self.counter,
            checkpoint: self.checkpoint.clone(),
            parents: self.parents.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LeaseTable {
    client: Client,
    table: String,
}

/// The outcome of a conditional write.
#[derive(Debug, PartialEq, Eq)]
pub enum Cas<T> {
    Done(T),
    /// The condition failed: someone else changed the lease.
    Lost,
}

impl<T> Cas<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Cas<U> {
        match self {
            Cas::Done(t) => Cas::Done(f(t)),
            Cas::Lost => Cas::Lost,
        }
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn is_condition_failure<E: ProvideErrorMetadata>(e: &E) -> bool {
    matches!(
        e.code(),
        Some("ConditionalCheckFailedException") | Some("TransactionCanceledException")
    )
}

/// Conditions a write on this worker holding the lease under the take that
/// wrote `take_token` (the owner alone for a lease taken without one).
fn fenced(
    update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    me: &str,
    take_token: Option<&str>,
) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
    let update = update.expression_attribute_values(":me", s(me));
    match take_token {
        Some(t) => update
            .condition_expression(format!("leaseOwner = :me AND {TAKE} = :take"))
            .expression_attribute_values(":take", s(t)),
        None => update.condition_expression("leaseOwner = :me"),
    }
}

macro_rules! cas {
    ($call:expr) => {
        match $call {
            Ok(out) => Ok(Cas::Done(out)),
            Err(e) if e.as_service_error().is_some_and(is_condition_failure) => Ok(Cas::Lost),
            Err(e) => Err(crate::aws::aws_error(e)),
        }
    };
}

impl LeaseTable {
    pub fn new(client: Client, table: String) -> Self {
        LeaseTable { client, table }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// Creates the table (on-demand billing) when it is absent and waits for it.
    pub async fn ensure(&self) -> anyhow::Result<()> {
        crate::aws::ensure_table(&self.client, &self.table, "leaseKey", "lease table")
            .await
            .map(drop)
    }

    /// Every lease, read consistently.
    pub async fn scan(&self) -> anyhow::Result<Vec<Lease>> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(crate::aws::aws_error)
                .with_context(|| format!("cannot scan lease table {}", self.table))?;
            for item in page.items() {
                match parse(item) {
                    Some(l) => out.push(l),
                    None => eprintln!(
                        "sshwarden: lease table {}: skipping malformed item {item:?}",
                        self.table
                    ),
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// Creates a lease for a new shard unless one exists.
    pub async fn create(
        &self,
        key: &str,
        checkpoint: &str,
        parents: &[String],
    ) -> anyhow::Result<Cas<()>> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("leaseKey", s(key))
            .item("leaseCounter", n(0))
            .item("checkpoint", s(checkpoint))
            .item("checkpointSubSequenceNumber", n(0))
            .item("ownerSwitchesSinceCheckpoint", n(0))
            .condition_expression("attribute_not_exists(leaseKey)");
        if !parents.is_empty() {
            put = put.item("parentShardId", AttributeValue::Ss(parents.to_vec()));
        }
        Ok(cas!(put.send().await)?.map(drop))
    }

    /// Bumps the counter of a lease we hold; `Lost` when someone took it.
    pub async fn renew(&self, key: &str, me: &str, counter: u64) -> anyhow::Result<Cas<u64>> {
        let r = cas!(
            self.client
                .update_item()
                .table_name(&self.table)
                .key("leaseKey", s(key))
                .update_expression("SET leaseCounter = :next")
                .condition_expression("leaseOwner = :me AND leaseCounter = :c")
                .expression_attribute_values(":me", s(me))
                .expression_attribute_values(":c", n(counter))
                .expression_attribute_values(":next", n(counter + 1))
                .send()
                .await
        )?;
        Ok(r.map(|_| counter + 1))
    }

    /// Takes (or steals) a lease last seen with `counter` and `owner`.
    pub async fn take(&self, lease: &Lease, me: &str) -> anyhow::Result<Cas<Lease>> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("leaseKey", s(&lease.key))
            .update_expression(format!(
                "SET leaseOwner = :me, leaseCounter = :next, ownerSwitchesSinceCheckpoint = ownerSwitchesSinceCheckpoint + :one, {TAKE} = :take"
            ))
            .expression_attribute_values(":me", s(me))
            .expression_attribute_values(":take", s(&format!("{:016x}", rand::random::<u64>())))
            .expression_attribute_values(":c", n(lease.counter))
            .expression_attribute_values(":next", n(lease.counter + 1))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew);
        update = match &lease.owner {
            Some(owner) => update
                .condition_expression("leaseCounter = :c AND leaseOwner = :owner")
                .expression_attribute_values(":owner", s(owner)),
            None => update
                .condition_expression("leaseCounter = :c AND attribute_not_exists(leaseOwner)"),
        };
        Ok(match cas!(update.send().await)? {
            Cas::Done(out) => match out.attributes().and_then(parse) {
                Some(l) => Cas::Done(l),
                None => bail!("lease {} came back malformed after taking it", lease.key),
            },
            Cas::Lost => Cas::Lost,
        })
    }

    /// An update of `lease`'s checkpoint, only by its owner under the take
    /// that started the reader, that resets the counters KCL resets with
    /// it; the caller completes the `SET` expression it returns.
    fn set_checkpoint(
        &self,
        lease: &Lease,
        me: &str,
        checkpoint: &str,
    ) -> (
        &'static str,
        aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("leaseKey", s(&lease.key));
        let update = fenced(update, me, lease.take_token.as_deref())
            .expression_attribute_values(":checkpoint", s(checkpoint))
            .expression_attribute_values(":zero", n(0));
        (
            "SET checkpoint = :checkpoint, checkpointSubSequenceNumber = :zero, ownerSwitchesSinceCheckpoint = :zero",
            update,
        )
    }

    /// Records progress; only the owner may, under the take that started
    /// the reader (`lease.take_token`).
    /// `event_time_ms` is the shard engine's event time when the checkpoint
    /// was taken (`sshwardenEventTime`): the next owner resumes from it so
    /// windows closed before the checkpoint stay closed.
    pub async fn checkpoint(
        &self,
        lease: &Lease,
        me: &str,
        sequence: &str,
        event_time_ms: Option<i64>,
    ) -> anyhow::Result<Cas<()>> {
        let (set, mut update) = self.set_checkpoint(lease, me, sequence);
        update = match event_time_ms {
            Some(t) => update
                .update_expression(format!("{set}, {EVENT_TIME} = :t"))
                .expression_attribute_values(":t", AttributeValue::N(t.to_string())),
            None => update.update_expression(set),
        };
        let r = cas!(update.send().await)?;
        Ok(r.map(drop))
    }

    /// Marks a lease finished (SHARD_END), with what its children must
    /// replay to rebuild the windows still open at its end; only the owner
    /// may, under the take that started the reader.
    pub async fn end(
        &self,
        lease: &Lease,
        me: &str,
        replay: &[ReplayFrom],
    ) -> anyhow::Result<Cas<()>> {
        let (set, mut update) = self.set_checkpoint(lease, me, &Checkpoint::ShardEnd.to_string());
        update = if replay.is_empty() {
            update.update_expression(format!("{set} REMOVE {REPLAY}"))
        } else {
            update
                .update_expression(format!("{set}, {REPLAY} = :replay"))
                .expression_attribute_values(":replay", s(&serde_json::to_string(replay)?))
        };
        let r = cas!(update.send().await)?;
        Ok(r.map(drop))
    }

    /// One lease, read consistently; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<Lease>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("leaseKey", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(crate::aws::aws_error)
            .with_context(|| format!("cannot read lease {key} from {}", self.table))?;
        Ok(out.item().and_then(parse))
    }

    /// Gives a lease up (shutdown), so another worker takes it at once;
    /// only under the take that gave it to us.
    pub async fn release(&self, lease: &Lease, me: &str) -> anyhow::Result<Cas<()>> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("leaseKey", s(&lease.key))
            .update_expression(format!(
                "REMOVE leaseOwner, {TAKE} SET leaseCounter = leaseCounter + :one"
            ))
            .expression_attribute_values(":one", n(1));
        let r = cas!(fenced(update, me, lease.take_token.as_deref()).send().await)?;
        Ok(r.map(drop))
    }

    /// Deletes a finished lease (its children have started).
    pub async fn delete_finished(&self, key: &str) -> anyhow::Result<Cas<()>> {
        let r = cas!(
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("leaseKey", s(key))
                .condition_expression("checkpoint = :end")
                .expression_attribute_values(":end", s(&Checkpoint::ShardEnd.to_string()))
                .send()
                .await
        )?;
        Ok(r.map(drop))
    }
}

fn parse(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    let str_of = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let num_of = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Lease {
        key: str_of("leaseKey")?,
        owner: str_of("leaseOwner").filter(|o| !o.is_empty()),
        counter: num_of("leaseCounter").unwrap_or(0),
        checkpoint: str_of("checkpoint")?,
        owner_switches: num_of("ownerSwitchesSinceCheckpoint").unwrap_or(0),
        parents: item
            .get("parentShardId")
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
        event_time_ms: item
            .get(EVENT_TIME)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok()),
        replay: str_of(REPLAY)
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default(),
        take_token: str_of(TAKE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_lease_carries_what_its_children_replay() {
        let replay = vec![
            ReplayFrom {
                shard: "shardId-000000000000".into(),
                after: "49590338271490256608559692538361571095921575989136588898".into(),
            },
            ReplayFrom {
                shard: "shardId-000000000003".into(),
                after: Checkpoint::TrimHorizon.to_string(),
            },
        ];
        let item: HashMap<String, AttributeValue> = [
            ("leaseKey", s("shardId-000000000003")),
            ("leaseCounter", n(7)),
            ("checkpoint", s(&Checkpoint::ShardEnd.to_string())),
            (REPLAY, s(&serde_json::to_string(&replay).unwrap())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let lease = parse(&item).unwrap();
        assert_eq!(lease.replay, replay);
        assert_eq!(lease.owner, None);
        let mut plain = item.clone();
        plain.remove(REPLAY);
        assert!(parse(&plain).unwrap().replay.is_empty());
    }

    /// A lease table on moto (SSHWARDEN_MOTO_ENDPOINT, default
    /// http://127.0.0.1:5000); fails with how to start it when unreachable.
    async fn moto_table(label: &str) -> LeaseTable {
        let endpoint = std::env::var("SSHWARDEN_MOTO_ENDPOINT")
            .unwrap_or_else(|_| "http://127.0.0.1:5000".into());
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .endpoint_url(&endpoint)
            .load()
            .await;
        let name = format!(
            "sshwarden-unit-{label}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let table = LeaseTable::new(Client::new(&sdk), name);
        if let Err(e) = table.ensure().await {
            panic!(
                "moto (DynamoDB) is not reachable at {endpoint} ({e:#}): start the local \
                 emulators with `scripts/emulators up` (or set SSHWARDEN_MOTO_ENDPOINT)"
            );
        }
        table
    }

    /// The same worker id takes a lease again (a process restarted under a
    /// fixed worker id while its predecessor hangs): the predecessor's
    /// reader can no longer checkpoint, end or release it, though the owner
    /// is still its id; the new take's reader can. Its own renewals, which
    /// move the counter, do not get in the way.
    #[tokio::test]
    async fn only_the_latest_take_writes_checkpoints() {
        let table = moto_table("fence").await;
        let key = "shardId-000000000000";
        assert_eq!(
            table
                .create(key, &Checkpoint::TrimHorizon.to_string(), &[])
                .await
                .unwrap(),
            Cas::Done(())
        );
        let fresh = table.get(key).await.unwrap().unwrap();
        let Cas::Done(first) = table.take(&fresh, "w").await.unwrap() else {
            panic!("first take failed");
        };
        assert_eq!(
            table.checkpoint(&first, "w", "1", None).await.unwrap(),
            Cas::Done(())
        );
        // Renewals between checkpoints keep the take valid.
        let Cas::Done(counter) = table.renew(key, "w", first.counter).await.unwrap() else {
            panic!("renewal failed");
        };
        assert_eq!(
            table.checkpoint(&first, "w", "2", Some(7)).await.unwrap(),
            Cas::Done(())
        );
        // The predecessor stopped renewing; the same id takes it again.
        let seen = table.get(key).await.unwrap().unwrap();
        assert_eq!(seen.counter, counter);
        let Cas::Done(second) = table.take(&seen, "w").await.unwrap() else {
            panic!("second take failed");
        };
        assert_eq!(second.owner.as_deref(), Some("w"));
        assert_ne!(second.take_token, first.take_token);
        assert!(second.take_token.is_some());
        // The stale reader is fenced off everywhere...
        assert_eq!(
            table.checkpoint(&first, "w", "9", None).await.unwrap(),
            Cas::Lost
        );
        assert_eq!(table.end(&first, "w", &[]).await.unwrap(), Cas::Lost);
        assert_eq!(table.release(&first, "w").await.unwrap(), Cas::Lost);
        // ...another worker too, and its stale renewal fails on the counter.
        assert_eq!(
            table.checkpoint(&second, "v", "9", None).await.unwrap(),
            Cas::Lost
        );
        assert_eq!(table.renew(key, "w", counter).await.unwrap(), Cas::Lost);
        assert_eq!(table.get(key).await.unwrap().unwrap().checkpoint, "2");
        // The new take's reader writes.
        assert_eq!(
            table.checkpoint(&second, "w", "3", None).await.unwrap(),
            Cas::Done(())
        );
        assert_eq!(table.release(&second, "w").await.unwrap(), Cas::Done(()));
        let released = table.get(key).await.unwrap().unwrap();
        assert_eq!((released.owner, released.take_token), (None, None));
        assert_eq!(released.checkpoint, "3");
        let _ = table
            .client
            .delete_table()
            .table_name(table.name())
            .send()
            .await;
    }
}
