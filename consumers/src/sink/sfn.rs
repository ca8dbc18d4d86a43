//! The Step Functions sink: one execution of the quarantine state machine
//! (or, for `block` commands with `[blocks]`, of the block state machine)
//! per command, named by the command id, so a replay is recognised.

use sshwarden_pipeline::command::Command;

use super::{Delivered, DeliveryError};

/// Starts the quarantine state machine with the command as input. The
/// execution name is the command id, so a replayed command finds its
/// execution: Standard workflows return the running execution for the same
/// name and input, or `ExecutionAlreadyExists`; both mean "already handled".
///
/// The first case is a success response like a new start, told apart only by
/// its `startDate`: that of the execution started earlier. A start date more
/// than [`EARLIER_START_MS`] before this request was sent marks a replay.
pub struct SfnSink {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
}

impl SfnSink {
    pub fn new(client: aws_sdk_sfn::Client, state_machine_arn: String) -> Self {
        SfnSink {
            client,
            state_machine_arn,
        }
    }

    pub(super) async fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        let input = serde_json::to_string(command).map_err(|e| DeliveryError(e.to_string()))?;
        self.start(command, input).await
    }

    /// Starts the machine for `command` with `input` (the command plus
    /// what the worker decided for it, for the block machine).
    pub(super) async fn start(
        &self,
        command: &Command,
        input: String,
    ) -> Result<Delivered, DeliveryError> {
        let sent_ms = unix_ms(std::time::SystemTime::now());
        match self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(command.execution_name())
            .input(input)
            .send()
            .await
        {
            Ok(out) => Ok(match out.start_date().to_millis() {
                Ok(started_ms) if started_earlier(started_ms, sent_ms) => Delivered::AlreadyHandled,
                _ => Delivered::New,
            }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_execution_already_exists()) =>
            {
                Ok(Delivered::AlreadyHandled)
            }
            // An error no retry can fix (missing permissions, a wrong ARN,
            // input Step Functions rejects) is given up on, counted by its
            // code and logged with its message (threat model T7): retrying it
            // forever would hold the checkpoint and fill the outbox for
            // nothing. Throttling, 5xx and transport errors are retried by the
            // SDK first, then by the outbox with backoff.
            Err(e) => {
                let code = aws_sdk_sfn::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
                let message = crate::aws::aws_error(e);
                match code.filter(|c| is_permanent(c)) {
                    Some(code) => {
                        tracing::error!(id = %command.id, rule = %command.rule, code = %code, error = %message,
                            "command given up: StartExecution failed in a way no retry can fix");
                        Ok(Delivered::Failed(code))
                    }
                    None => Err(DeliveryError(format!(
                        "StartExecution {}: {message}",
                        command.execution_name()
                    ))),
                }
            }
        }
    }
}

/// StartExecution error codes that retrying cannot fix: permissions
/// refused, a malformed ARN, input or a name Step Functions rejects.
/// Anything else (throttling, 5xx, transport, codes not listed) is retried,
/// including a state machine that does not exist (yet): during a deploy or
/// a recovery the machine appears a moment after the endpoint answers, and
/// giving up then would drop quarantines (seen in `scripts/e2e`'s outage
/// case); the readiness probe reports it meanwhile.
const PERMANENT_CODES: &[&str] = &[
    "AccessDeniedException",
    "UnrecognizedClientException",
    "KmsAccessDeniedException",
    "ValidationException",
    "InvalidArn",
    "InvalidName",
    "InvalidExecutionInput",
];

fn is_permanent(code: &str) -> bool {
    PERMANENT_CODES.contains(&code)
}

/// How much older than the request a returned execution's start date must be
/// to count as started earlier. A replay reaches a running execution only
/// after a restart or a lease takeover (seconds to tens of seconds later);
/// the margin covers the request's own latency and ordinary clock skew, so a
/// new execution is never reported as a replay. A duplicate within the margin
/// is reported as new, which is harmless: it still started nothing.
const EARLIER_START_MS: i64 = 5_000;

fn started_earlier(started_ms: i64, sent_ms: i64) -> bool {
    started_ms < sent_ms - EARLIER_START_MS
}

fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On moto: a malformed state machine ARN is given up on at once (the
    /// command is not retried forever), with its error code; a machine that
    /// does not exist (yet) is retried.
    #[tokio::test]
    async fn a_malformed_arn_is_given_up_on_a_missing_machine_retried() {
        let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
        let c = crate::sink::outbox::tests::command("sw1-i-i-0123456789abcdef0-invalid-user-1");
        let bad = SfnSink::new(
            aws_sdk_sfn::Client::new(&sdk),
            "arn:aws:states:us-east-1:123456789012:stateMachine".into(),
        );
        let d = tokio::time::timeout(std::time::Duration::from_secs(20), bad.deliver(&c))
            .await
            .expect("answered within 20 s");
        assert_eq!(
            d.expect("not a retried error"),
            Delivered::Failed("InvalidArn".into())
        );
        let missing = SfnSink::new(
            aws_sdk_sfn::Client::new(&sdk),
            format!(
                "arn:aws:states:us-east-1:123456789012:stateMachine:sshwarden-missing-{}",
                sshwarden_testsupport::suffix()
            ),
        );
        let d = tokio::time::timeout(std::time::Duration::from_secs(20), missing.deliver(&c))
            .await
            .expect("answered within 20 s");
        assert!(d.is_err(), "a missing machine was given up on: {d:?}");
    }

    #[test]
    fn errors_no_retry_fixes_are_given_up_on_the_rest_retried() {
        for code in [
            "AccessDeniedException",
            "InvalidArn",
            "InvalidExecutionInput",
            "ValidationException",
        ] {
            assert!(is_permanent(code), "{code}");
        }
        for code in [
            "ThrottlingException",
            "ServiceUnavailable",
            "InternalServerError",
            "ExecutionLimitExceeded",
            "StateMachineDoesNotExist",
            "",
        ] {
            assert!(!is_permanent(code), "{code}");
        }
    }

    #[test]
    fn a_running_execution_returned_for_a_replay_is_already_handled() {
        let sent = 1_795_964_040_000;
        // StartExecution returned the execution a previous owner started.
        assert!(started_earlier(sent - 12_000, sent));
        // Started by this request: its start date is around the send time,
        // a little before it with skew, or after it.
        assert!(!started_earlier(sent + 300, sent));
        assert!(!started_earlier(sent - 1_500, sent));
        assert!(!started_earlier(sent - EARLIER_START_MS, sent));
    }
}
