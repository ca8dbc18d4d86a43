//! What the AWS SDK clients of every layer share: an SDK error with its
//! whole chain of causes for anyhow, a failed call sorted into what a
//! retry can fix and what it cannot, and the DynamoDB table creation both
//! the lease table (Kinesis source) and the blast-radius gate (sinks) use.
//! At the bottom of the crate: it imports nothing of ours.

use std::time::Duration;

use anyhow::{bail, Context};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;

/// An AWS SDK error with its whole chain of causes, for anyhow.
pub fn aws_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::anyhow!(
        "{}",
        aws_smithy_types::error::display::DisplayErrorContext(&e)
    )
}

/// A failed AWS call, as the sinks report and retry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    /// The service's error code (`ServiceError` when it gave none).
    pub code: String,
    /// The call and the error's whole chain of causes.
    pub cause: String,
    /// Retrying may help (throttling, 5xx, transport).
    pub transient: bool,
}

/// Service error codes (or parts of them) that retrying can fix.
const TRANSIENT_CODES: &[&str] = &[
    "Throttl",
    "RequestLimitExceeded",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
];

/// Sorts the error of `call` (the SDK's error type is the same for every
/// service client): a service error by its code, a request that could not
/// be built as permanent, and anything on the way (dispatch, timeout, an
/// unreadable response) as transient.
pub fn call_failure<E, R>(call: &str, e: aws_sdk_dynamodb::error::SdkError<E, R>) -> CallFailure
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
    let cause = format!(
        "{call}: {}",
        aws_smithy_types::error::display::DisplayErrorContext(&e)
    );
    match &e {
        SdkError::ServiceError(_) => {
            let code = e.code().unwrap_or("").to_owned();
            let transient = code.is_empty() || TRANSIENT_CODES.iter().any(|t| code.contains(t));
            CallFailure {
                code: if code.is_empty() {
                    "ServiceError".into()
                } else {
                    code
                },
                cause,
                transient,
            }
        }
        SdkError::ConstructionFailure(_) => CallFailure {
            code: "ConstructionFailure".into(),
            cause,
            transient: false,
        },
        _ => CallFailure {
            code: "Unreachable".into(),
            cause,
            transient: true,
        },
    }
}

/// Creates a table keyed by the string `hash_key` (on-demand billing) when it
/// is absent, and waits until it is ACTIVE. True when this call created it.
/// Several workers may start at once: a table created in the meantime by
/// another one is fine.
pub async fn ensure_table(
    client: &Client,
    table: &str,
    hash_key: &str,
    what: &str,
) -> anyhow::Result<bool> {
    let mut created = false;
    match client.describe_table().table_name(table).send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            let create = client
                .create_table()
                .table_name(table)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(hash_key)
                        .attribute_type(ScalarAttributeType::S)
                        .build()?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(hash_key)
                        .key_type(KeyType::Hash)
                        .build()?,
                )
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            match create {
                Ok(_) => created = true,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_resource_in_use_exception()) => {}
                Err(e) => {
                    return Err(aws_error(e))
                        .with_context(|| format!("cannot create {what} {table}"))
                }
            }
        }
        Err(e) => {
            return Err(aws_error(e)).with_context(|| format!("cannot describe {what} {table}"))
        }
    }
    for _ in 0..120 {
        if let Ok(d) = client.describe_table().table_name(table).send().await {
            if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(created);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("{what} {table} did not become ACTIVE within 60 s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::{ErrorMetadata, SdkError};
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use aws_smithy_types::body::SdkBody;

    fn service(code: Option<&str>) -> SdkError<GetItemError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message("m");
        if let Some(c) = code {
            meta = meta.code(c);
        }
        let response = HttpResponse::new(400.try_into().expect("status"), SdkBody::empty());
        SdkError::service_error(GetItemError::generic(meta.build()), response)
    }

    #[test]
    fn a_failed_call_is_retried_only_when_a_retry_can_fix_it() {
        for code in [
            "ThrottlingException",
            "RequestLimitExceeded",
            "InternalError",
            "KMSThrottlingException",
        ] {
            let f = call_failure("GetItem", service(Some(code)));
            assert_eq!((f.code.as_str(), f.transient), (code, true));
            assert!(f.cause.starts_with("GetItem: "), "{}", f.cause);
        }
        for code in [
            "AccessDeniedException",
            "ValidationException",
            "ResourceNotFoundException",
        ] {
            let f = call_failure("GetItem", service(Some(code)));
            assert_eq!((f.code.as_str(), f.transient), (code, false));
        }
        // A service error without a code is not known to be final.
        let f = call_failure("GetItem", service(None));
        assert_eq!((f.code.as_str(), f.transient), ("ServiceError", true));
        let f = call_failure::<GetItemError, HttpResponse>(
            "GetItem",
            SdkError::construction_failure("bad input"),
        );
        assert_eq!(
            (f.code.as_str(), f.transient),
            ("ConstructionFailure", false)
        );
        let f =
            call_failure::<GetItemError, HttpResponse>("GetItem", SdkError::timeout_error("slow"));
        assert_eq!((f.code.as_str(), f.transient), ("Unreachable", true));
    }
}
