//! The step every source shares after the engine: deliver each command
//! until the sink takes it, holding the reader's checkpoint meanwhile. Run
//! by each reader's [`super::outbox`], so the reader keeps reading.

use sshwarden_pipeline::command::Command;
use tracing::warn;

use crate::metrics::{ActionLabel, GaveUpLabel, HeldLabel, Metrics};
use crate::sink::{Delivered, Sink};

/// Delivers `command` with exponential backoff and jitter until the sink
/// takes it (true), or until `interrupted` completes (false: shutdown, a
/// lost lease, a revoked partition). The caller's checkpoint (`held_what`:
/// "checkpoint", "commit") stays where it is meanwhile: nothing is dropped.
pub async fn deliver_until(
    sink: &Sink,
    metrics: &Metrics,
    command: &Command,
    held_what: &str,
    interrupted: impl std::future::Future<Output = ()>,
) -> bool {
    let mut backoff = crate::retry::backoff();
    let mut interrupted = std::pin::pin!(interrupted);
    let delivered = loop {
        match sink.deliver(command).await {
            Ok(d) => {
                count(metrics, command, &d);
                tracing::info!(id = %command.id, rule = %command.rule, outcome = d.as_str(), already_handled = (d == Delivered::AlreadyHandled), "command delivered");
                break true;
            }
            Err(e) => {
                metrics.command_failures.inc();
                warn!(id = %command.id, error = %e, "command delivery failed; retrying, {held_what} held");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_wait()) => {}
            _ = &mut interrupted => break false,
        }
    };
    delivered
}

/// Held commands are counted apart from delivered ones (a held quarantine
/// goes out as a notification, but is not one); a command given up on is
/// counted by its cause.
fn count(metrics: &Metrics, command: &Command, d: &Delivered) {
    let held = |action: &str, gate: &str| {
        metrics
            .commands_held
            .get_or_create(&HeldLabel {
                action: action.into(),
                gate: gate.into(),
            })
            .inc();
    };
    match d {
        Delivered::Held => held(command.action.as_str(), "fleet"),
        _ if command.held => held(command.action.as_str(), "policy"),
        Delivered::Failed(cause) => {
            metrics
                .commands_given_up
                .get_or_create(&GaveUpLabel {
                    cause: cause.clone(),
                })
                .inc();
        }
        Delivered::New | Delivered::AlreadyHandled => {
            metrics
                .commands
                .get_or_create(&ActionLabel {
                    action: command.action.as_str().into(),
                })
                .inc();
        }
    }
}
