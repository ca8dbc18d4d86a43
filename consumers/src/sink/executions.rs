//! What became of the quarantine executions the Step Functions sink
//! started (threat model T5): a failed, timed-out or aborted execution is
//! re-raised (an error log line naming the execution, its error and cause,
//! and `sshwarden_executions_failed_total`), and, where running it again can
//! help, redriven (RedriveExecution, at most [`MAX_REDRIVES`] times).
//!
//! Which ones are redriven ([`verdict`]): an execution that stopped
//! outside the machine's own failure branch (a runtime error in a Pass
//! state, a timeout, an abort). One that ended in `sshwarden.QuarantineFailed`
//! already went through the failure branch and notified (a redrive would
//! restart at that Fail state and fail again); it is re-raised only. The
//! operations alarm on failed executions (`FailedExecutionsAlarm`) is the
//! notification; the worker has no topic of its own with this sink.
//!
//! Every worker watches (no leader): a log line per worker, and a redrive
//! that another worker started first is refused by Step Functions (the
//! execution is running again), which is logged and harmless.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sfn::types::ExecutionStatus;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::metrics::{ExecutionLabel, Metrics};

/// How often the executions are listed.
pub const WATCH_EVERY: Duration = Duration::from_secs(30);
/// Redrives of one execution, at most.
pub const MAX_REDRIVES: i32 = 2;
/// Executions that stopped longer ago than this before the worker started
/// are not looked at (another worker, or an earlier run, reported them).
pub const LOOKBACK: Duration = Duration::from_secs(3_600);
/// An execution handled is forgotten once this many looks in a row did not
/// list it. ListExecutions lists the newest first and is eventually
/// consistent (AWS Step Functions API reference, ListExecutions): one that
/// fell out of the newest pages does not come back, one missing from a
/// single look may.
pub const FORGET_AFTER_LOOKS: u64 = 10;

/// What to do with a stopped execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Redrive,
    ReRaise,
}

/// `error` is the execution's error (`None` for an abort or timeout without one).
pub fn verdict(status: &ExecutionStatus, error: Option<&str>, redrive_count: i32) -> Verdict {
    let own_branch = error == Some("sshwarden.QuarantineFailed");
    let stopped = matches!(
        status,
        ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Aborted
    );
    if stopped && !own_branch && redrive_count < MAX_REDRIVES {
        Verdict::Redrive
    } else {
        Verdict::ReRaise
    }
}

pub struct ExecutionWatch {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
    metrics: Arc<Metrics>,
    /// Executions already handled (ARN and the redrive count seen), with
    /// the last look that listed them: a worker runs for months, and failed
    /// executions, which commands an attacker provokes can cause, would
    /// otherwise be kept for good.
    seen: HashMap<(String, i32), u64>,
    looks: u64,
    since_epoch_s: i64,
}

impl ExecutionWatch {
    pub fn new(
        client: aws_sdk_sfn::Client,
        state_machine_arn: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        ExecutionWatch {
            client,
            state_machine_arn,
            metrics,
            seen: HashMap::new(),
            looks: 0,
            since_epoch_s: now - LOOKBACK.as_secs() as i64,
        }
    }

    /// One look: every stopped execution not handled yet is re-raised or
    /// redriven. Returns how many were handled.
    pub async fn check(&mut self) -> Result<usize, String> {
        let mut handled = 0;
        self.looks += 1;
        for status in [
            ExecutionStatus::Failed,
            ExecutionStatus::TimedOut,
            ExecutionStatus::Aborted,
        ] {
            let out = self
                .client
                .list_executions()
                .state_machine_arn(&self.state_machine_arn)
                .status_filter(status.clone())
                .max_results(100)
                .send()
                .await
                .map_err(|e| crate::aws::aws_error(e).to_string())?;
            for e in out.executions() {
                if e.stop_date().is_some_and(|d| d.secs() < self.since_epoch_s) {
                    continue;
                }
                let arn = e.execution_arn();
                let d = self
                    .client
                    .describe_execution()
                    .execution_arn(arn)
                    .send()
                    .await
                    .map_err(|e| crate::aws::aws_error(e).to_string())?;
                let redrives = d.redrive_count().unwrap_or(0);
                match self.seen.entry((arn.to_owned(), redrives)) {
                    Entry::Occupied(mut listed) => {
                        listed.insert(self.looks);
                        continue;
                    }
                    Entry::Vacant(new) => {
                        new.insert(self.looks);
                    }
                }
                handled += 1;
                let error_code = d.error().unwrap_or("");
                let cause = d.cause().unwrap_or("");
                let label = ExecutionLabel {
                    status: status.as_str().to_owned(),
                    error: if error_code.is_empty() {
                        "none".into()
                    } else {
                        error_code.to_owned()
                    },
                };
                self.metrics.executions_failed.get_or_create(&label).inc();
                error!(
                    execution = arn,
                    name = e.name(),
                    status = status.as_str(),
                    error = error_code,
                    cause,
                    redrives,
                    "quarantine execution did not succeed"
                );
                if verdict(&status, d.error(), redrives) == Verdict::Redrive {
                    match self
                        .client
                        .redrive_execution()
                        .execution_arn(arn)
                        .send()
                        .await
                    {
                        Ok(_) => {
                            self.metrics.executions_redriven.inc();
                            info!(
                                execution = arn,
                                redrives = redrives + 1,
                                "quarantine execution redriven"
                            );
                        }
                        Err(err) => {
                            warn!(execution = arn, error = %crate::aws::aws_error(err), "quarantine execution could not be redriven; re-raised only");
                        }
                    }
                }
            }
        }
        forget_unlisted(&mut self.seen, self.looks);
        Ok(handled)
    }
}

/// Drops the executions not listed in the last [`FORGET_AFTER_LOOKS`]
/// looks, `looks` being the last one (a look that failed returned before
/// this: it forgets nothing).
fn forget_unlisted(seen: &mut HashMap<(String, i32), u64>, looks: u64) {
    seen.retain(|_, listed| *listed + FORGET_AFTER_LOOKS > looks);
}

/// Looks every [`WATCH_EVERY`] until shutdown.
pub fn watch(mut w: ExecutionWatch, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = w.check().await {
                warn!(error = %e, "cannot list the quarantine executions; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// moto runs state machines only when told (POST /moto-api/config).
    fn execute_state_machines(url: &str) {
        use std::io::{Read, Write};
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        let body = r#"{"stepfunctions": {"execute_state_machine": true}}"#;
        let mut s = std::net::TcpStream::connect(addr).expect("moto (scripts/emulators up moto)");
        write!(
            s,
            "POST /moto-api/config HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(
            reply
                .split(' ')
                .nth(1)
                .is_some_and(|code| code.starts_with('2')),
            "moto config: {reply}"
        );
    }

    #[test]
    fn executions_no_longer_listed_are_forgotten() {
        let mut seen = HashMap::new();
        seen.insert(("old".to_owned(), 0), 1);
        seen.insert(("kept".to_owned(), 0), 1);
        for look in 2..=FORGET_AFTER_LOOKS + 1 {
            // `kept` is listed by every look, `old` by the first only.
            seen.insert(("kept".to_owned(), 0), look);
            forget_unlisted(&mut seen, look);
            assert_eq!(
                seen.contains_key(&("old".to_owned(), 0)),
                look < FORGET_AFTER_LOOKS + 1,
                "look {look}"
            );
        }
        assert!(seen.contains_key(&("kept".to_owned(), 0)));
    }

    #[test]
    fn only_executions_that_stopped_outside_the_failure_branch_are_redriven_and_boundedly() {
        let f = ExecutionStatus::Failed;
        assert_eq!(verdict(&f, Some("States.Runtime"), 0), Verdict::Redrive);
        assert_eq!(
            verdict(&ExecutionStatus::TimedOut, None, 1),
            Verdict::Redrive
        );
        assert_eq!(
            verdict(&ExecutionStatus::Aborted, None, 0),
            Verdict::Redrive
        );
        assert_eq!(
            verdict(&f, Some("States.Runtime"), MAX_REDRIVES),
            Verdict::ReRaise
        );
        assert_eq!(
            verdict(&f, Some("sshwarden.QuarantineFailed"), 0),
            Verdict::ReRaise
        );
        assert_eq!(
            verdict(&ExecutionStatus::Succeeded, None, 0),
            Verdict::ReRaise
        );
    }

    /// On moto: a machine whose execution fails at once (a Fail state
    /// outside the failure branch); the watch reports it once, and again
    /// only after a redrive changes its count. moto has no RedriveExecution
    /// (the attempt is logged as refused): the redrive itself is on paper.
    #[tokio::test]
    async fn a_failed_execution_is_re_raised_once() {
        let url = sshwarden_testsupport::moto_endpoint();
        execute_state_machines(&url);
        let sdk = sshwarden_testsupport::sdk(&url).await;
        let sfn = aws_sdk_sfn::Client::new(&sdk);
        let name = format!("sshwarden-watch-test-{}", sshwarden_testsupport::suffix());
        let arn = sfn
            .create_state_machine()
            .name(&name)
            .role_arn("arn:aws:iam::123456789012:role/sshwarden-stepfunctions")
            .definition(r#"{"StartAt":"Broken","States":{"Broken":{"Type":"Fail","Error":"States.Runtime","Cause":"test"}}}"#)
            .send()
            .await
            .expect("moto: CreateStateMachine (scripts/emulators up moto)")
            .state_machine_arn()
            .to_owned();
        let metrics = Arc::new(Metrics::default());
        let mut w = ExecutionWatch::new(sfn.clone(), arn.clone(), metrics.clone());
        assert_eq!(w.check().await.expect("list"), 0);
        sfn.start_execution()
            .state_machine_arn(&arn)
            .name("sw1-i-i-0123456789abcdef0-invalid-user-1")
            .input("{}")
            .send()
            .await
            .expect("start");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut handled = 0;
        while handled == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the failed execution was not seen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            handled = w.check().await.expect("list");
        }
        assert_eq!(handled, 1);
        assert_eq!(w.check().await.expect("list"), 0, "re-raised twice");
        let label = ExecutionLabel {
            status: "FAILED".into(),
            error: "States.Runtime".into(),
        };
        assert_eq!(metrics.executions_failed.get_or_create(&label).get(), 1);
        let _ = sfn
            .delete_state_machine()
            .state_machine_arn(&arn)
            .send()
            .await;
    }
}
