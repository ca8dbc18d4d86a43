//! Whether the sink is reachable, for `/readyz` and `sshwarden_sink_up`:
//! a cheap read call on what the sink writes to, now and every
//! [`SINK_PROBE_EVERY`] until shutdown. With the Step Functions sink it
//! also starts the watch of failed executions ([`crate::sink::executions`]).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{SinkKind, SinkSettings};
use crate::metrics::Metrics;

/// What "the sink is reachable" means for each sink.
pub enum SinkProbe {
    /// Writing to stdout cannot be probed ahead of a write: always up.
    Stdout,
    /// DescribeStateMachine on the quarantine machine: the endpoint answers,
    /// the credentials work and the machine exists.
    Sfn {
        client: aws_sdk_sfn::Client,
        state_machine_arn: String,
    },
    /// GetTopicAttributes on the notification topic (the direct sink): the
    /// endpoint answers, the credentials work and the topic exists.
    #[cfg(feature = "direct")]
    Direct {
        client: aws_sdk_sns::Client,
        topic_arn: String,
    },
}

impl SinkProbe {
    async fn check(&self) -> Result<(), String> {
        match self {
            SinkProbe::Stdout => Ok(()),
            SinkProbe::Sfn {
                client,
                state_machine_arn,
            } => client
                .describe_state_machine()
                .state_machine_arn(state_machine_arn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| crate::aws::aws_error(e).to_string()),
            #[cfg(feature = "direct")]
            SinkProbe::Direct { client, topic_arn } => client
                .get_topic_attributes()
                .topic_arn(topic_arn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| crate::aws::aws_error(e).to_string()),
        }
    }
}

/// How often the sink is probed for `/readyz` and `sshwarden_sink_up`.
pub const SINK_PROBE_EVERY: Duration = Duration::from_secs(15);

/// Probes the sink now and then every [`SINK_PROBE_EVERY`] until shutdown,
/// keeping `sink_up` current; a change is logged once, not every probe.
pub fn watch_sink(
    probe: SinkProbe,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // With Step Functions, also what became of the executions started.
    if let SinkProbe::Sfn {
        client,
        state_machine_arn,
    } = &probe
    {
        crate::sink::executions::watch(
            crate::sink::executions::ExecutionWatch::new(
                client.clone(),
                state_machine_arn.clone(),
                metrics.clone(),
            ),
            shutdown.clone(),
        );
    }
    tokio::spawn(async move {
        let mut was_up = None;
        loop {
            let result = probe.check().await;
            let up = result.is_ok();
            metrics.sink_up.set(i64::from(up));
            if was_up != Some(up) {
                match &result {
                    Ok(()) => tracing::info!("sink reachable"),
                    Err(e) => tracing::warn!(error = %e, "sink unreachable"),
                }
                was_up = Some(up);
            }
            tokio::select! {
                _ = tokio::time::sleep(SINK_PROBE_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}

/// What `/readyz` probes for this sink: the state machine (sfn), the topic
/// (direct); writing to stdout cannot be probed ahead of a write.
pub fn probe(settings: &SinkSettings, sdk: &aws_config::SdkConfig) -> SinkProbe {
    match (
        settings.kind,
        &settings.state_machine_arn,
        &settings.topic_arn,
    ) {
        (SinkKind::Sfn, Some(arn), _) => SinkProbe::Sfn {
            client: aws_sdk_sfn::Client::new(sdk),
            state_machine_arn: arn.clone(),
        },
        #[cfg(feature = "direct")]
        (SinkKind::Direct, _, Some(topic)) => SinkProbe::Direct {
            client: aws_sdk_sns::Client::new(sdk),
            topic_arn: topic.clone(),
        },
        _ => SinkProbe::Stdout,
    }
}
