//! What the AWS SDK clients of every layer share: an SDK error with its
//! whole chain of causes for anyhow, and the DynamoDB table creation both
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
