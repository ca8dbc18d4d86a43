//! The EC2 side of a block: where the attacked instances are (their subnets'
//! network ACLs and their VPCs' own ranges), and the inbound deny entries
//! in the reserved range of rule numbers. Nothing here writes outside that
//! range: entries are created or replaced only at numbers in it, and
//! deleted only when they still deny the CIDR being removed.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, NetworkAclEntry, PortRange, RuleAction};
use ipnet::IpNet;

use super::BlockError;
use crate::config::{AclScope, BlockPorts};

fn ec2_error<E, R>(call: &str, e: SdkError<E, R>) -> BlockError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let f = crate::aws::call_failure(call, e);
    BlockError {
        error: f.code,
        cause: f.cause,
        transient: f.transient,
    }
}

/// Where the attacked instances are.
#[derive(Debug, Default)]
pub struct Placement {
    /// The network ACLs of their subnets.
    pub acls: BTreeSet<String>,
    /// Their VPCs' IPv4 and IPv6 ranges (never blocked).
    pub vpc_cidrs: Vec<IpNet>,
    /// Instance ids EC2 did not know.
    pub unknown: Vec<String>,
}

/// One inbound entry of an ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub rule_number: i32,
    pub deny: bool,
    pub cidr: Option<IpNet>,
}

fn entry_from(e: &NetworkAclEntry) -> Option<Entry> {
    if e.egress() == Some(true) {
        return None;
    }
    let cidr = e
        .cidr_block()
        .or(e.ipv6_cidr_block())
        .and_then(|c| c.parse::<IpNet>().ok())
        .map(|c| c.trunc());
    Some(Entry {
        rule_number: e.rule_number()?,
        deny: e.rule_action() == Some(&RuleAction::Deny),
        cidr,
    })
}

pub struct Acls {
    ec2: aws_sdk_ec2::Client,
    ports: BlockPorts,
    scope: AclScope,
    /// Configured ACLs that replace what `scope` picks.
    listed: Vec<String>,
    /// When known (the direct sink's quarantine group's VPC), the only VPC
    /// whose instances are located and whose ACLs are written.
    protected_vpc: Option<String>,
}

impl Acls {
    pub fn new(ec2: aws_sdk_ec2::Client, ports: BlockPorts) -> Self {
        Acls {
            ec2,
            ports,
            scope: AclScope::Subnets,
            listed: Vec::new(),
            protected_vpc: None,
        }
    }

    /// Only instances of `vpc` count, and only its ACLs are written
    /// ([`Acls::entries`], read before every write, refuses any other).
    pub fn with_protected_vpc(mut self, vpc: Option<String>) -> Self {
        self.protected_vpc = vpc;
        self
    }

    /// Blocks go into these ACLs, whatever the scope ([`Acls::locate`]
    /// checks that each is in an attacked instance's VPC).
    pub fn with_listed(mut self, acls: Vec<String>) -> Self {
        self.listed = acls;
        self
    }

    /// Which ACLs [`Acls::locate`] returns.
    pub fn with_scope(mut self, scope: AclScope) -> Self {
        self.scope = scope;
        self
    }

    /// The ACLs of the instances' subnets (or of their whole VPCs) and
    /// their VPCs' ranges.
    pub async fn locate(&self, instances: &[String]) -> Result<Placement, BlockError> {
        let mut placement = Placement::default();
        if instances.is_empty() {
            return Ok(placement);
        }
        let mut subnets = BTreeSet::new();
        let mut vpcs = BTreeSet::new();
        let mut found = BTreeSet::new();
        // One at a time: a single unknown id fails the whole call.
        for id in instances {
            let out = self.ec2.describe_instances().instance_ids(id).send().await;
            let out = match out {
                Ok(o) => o,
                Err(e)
                    if e.code()
                        .is_some_and(|c| c.contains("NotFound") || c.contains("Malformed")) =>
                {
                    continue
                }
                Err(e) => return Err(ec2_error("DescribeInstances", e)),
            };
            for i in out.reservations().iter().flat_map(|r| r.instances()) {
                if self
                    .protected_vpc
                    .as_deref()
                    .is_some_and(|p| i.vpc_id() != Some(p))
                {
                    // Outside the protected VPC: not located, so not blocked
                    // there (as the block state machine's vpc-id filter).
                    continue;
                }
                if let Some(s) = i.subnet_id() {
                    subnets.insert(s.to_owned());
                }
                if let Some(v) = i.vpc_id() {
                    vpcs.insert(v.to_owned());
                }
                if let Some(i) = i.instance_id() {
                    found.insert(i.to_owned());
                }
            }
        }
        placement.unknown = instances
            .iter()
            .filter(|i| !found.contains(*i))
            .cloned()
            .collect();
        let filter = match self.scope {
            AclScope::Subnets => ("association.subnet-id", subnets),
            AclScope::Vpc => ("vpc-id", vpcs.clone()),
        };
        if !self.listed.is_empty() && !vpcs.is_empty() {
            let out = self
                .ec2
                .describe_network_acls()
                .set_network_acl_ids(Some(self.listed.clone()))
                .send()
                .await
                .map_err(|e| {
                    let mut err = ec2_error("DescribeNetworkAcls", e);
                    if err.error.contains("NotFound") {
                        err.transient = false;
                    }
                    err
                })?;
            for a in out.network_acls() {
                let vpc = a.vpc_id().unwrap_or_default();
                if !vpcs.contains(vpc) {
                    return Err(BlockError::permanent(
                        "sshwarden.AclOutsideVpc",
                        format!(
                            "the configured network ACL {} is in {vpc}, not in the attacked instances' VPC {vpcs:?}",
                            a.network_acl_id().unwrap_or_default()
                        ),
                    ));
                }
                if let Some(id) = a.network_acl_id() {
                    placement.acls.insert(id.to_owned());
                }
            }
            if placement.acls.len() != self.listed.len() {
                return Err(BlockError::permanent(
                    "InvalidNetworkAclID.NotFound",
                    format!(
                        "of the configured network ACLs {:?} EC2 knows {:?}",
                        self.listed, placement.acls
                    ),
                ));
            }
        } else if !filter.1.is_empty() {
            let out = self
                .ec2
                .describe_network_acls()
                .filters(
                    Filter::builder()
                        .name(filter.0)
                        .set_values(Some(filter.1.into_iter().collect()))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| ec2_error("DescribeNetworkAcls", e))?;
            placement.acls = out
                .network_acls()
                .iter()
                .filter_map(|a| a.network_acl_id().map(str::to_owned))
                .collect();
        }
        if !vpcs.is_empty() {
            let out = self
                .ec2
                .describe_vpcs()
                .set_vpc_ids(Some(vpcs.into_iter().collect()))
                .send()
                .await
                .map_err(|e| ec2_error("DescribeVpcs", e))?;
            for v in out.vpcs() {
                let v4 = v
                    .cidr_block_association_set()
                    .iter()
                    .filter_map(|a| a.cidr_block());
                let v6 = v
                    .ipv6_cidr_block_association_set()
                    .iter()
                    .filter_map(|a| a.ipv6_cidr_block());
                placement.vpc_cidrs.extend(
                    v.cidr_block()
                        .into_iter()
                        .chain(v4)
                        .chain(v6)
                        .filter_map(|c| c.parse::<IpNet>().ok()),
                );
            }
            placement.vpc_cidrs.sort();
            placement.vpc_cidrs.dedup();
        }
        Ok(placement)
    }

    /// The inbound entries of an ACL by rule number.
    pub async fn entries(&self, acl: &str) -> Result<BTreeMap<i32, Entry>, BlockError> {
        let out = self
            .ec2
            .describe_network_acls()
            .network_acl_ids(acl)
            .send()
            .await
            .map_err(|e| {
                let mut err = ec2_error("DescribeNetworkAcls", e);
                if err.error.contains("NotFound") {
                    // moto says InvalidRouteTableID.NotFound for a missing ACL.
                    err.error = "InvalidNetworkAclID.NotFound".into();
                    err.transient = false;
                }
                err
            })?;
        let Some(a) = out
            .network_acls()
            .iter()
            .find(|a| a.network_acl_id() == Some(acl))
        else {
            return Err(BlockError::permanent(
                "InvalidNetworkAclID.NotFound",
                format!("DescribeNetworkAcls returned no ACL {acl}"),
            ));
        };
        if let Some(p) = self
            .protected_vpc
            .as_deref()
            .filter(|p| a.vpc_id() != Some(*p))
        {
            return Err(BlockError::permanent(
                "sshwarden.AclOutsideVpc",
                format!(
                    "{acl} is in {}, not in the protected VPC {p}",
                    a.vpc_id().unwrap_or("no VPC")
                ),
            ));
        }
        Ok(a.entries()
            .iter()
            .filter_map(entry_from)
            .map(|e| (e.rule_number, e))
            .collect())
    }

    /// Writes the deny of `cidr` at `rule_number` (replacing what the
    /// reserved range held there: an entry of a block evicted before).
    pub async fn deny(
        &self,
        acl: &str,
        rule_number: i32,
        cidr: &IpNet,
        existing: Option<&Entry>,
    ) -> Result<(), BlockError> {
        if existing.is_some_and(|e| e.deny && e.cidr.as_ref() == Some(cidr)) {
            return Ok(());
        }
        let (protocol, ports) = match self.ports {
            BlockPorts::All => ("-1", None),
            BlockPorts::Ssh => ("6", Some(PortRange::builder().from(22).to(22).build())),
        };
        let (v4, v6) = match cidr {
            IpNet::V4(_) => (Some(cidr.to_string()), None),
            IpNet::V6(_) => (None, Some(cidr.to_string())),
        };
        if existing.is_some() {
            self.ec2
                .replace_network_acl_entry()
                .network_acl_id(acl)
                .rule_number(rule_number)
                .egress(false)
                .protocol(protocol)
                .set_port_range(ports)
                .rule_action(RuleAction::Deny)
                .set_cidr_block(v4)
                .set_ipv6_cidr_block(v6)
                .send()
                .await
                .map_err(|e| ec2_error("ReplaceNetworkAclEntry", e))?;
        } else {
            self.ec2
                .create_network_acl_entry()
                .network_acl_id(acl)
                .rule_number(rule_number)
                .egress(false)
                .protocol(protocol)
                .set_port_range(ports)
                .rule_action(RuleAction::Deny)
                .set_cidr_block(v4)
                .set_ipv6_cidr_block(v6)
                .send()
                .await
                .map_err(|e| ec2_error("CreateNetworkAclEntry", e))?;
        }
        Ok(())
    }

    /// Deletes the entry at `rule_number` if it still denies `cidr`; true
    /// when it did.
    pub async fn remove(
        &self,
        acl: &str,
        rule_number: i32,
        cidr: &IpNet,
    ) -> Result<bool, BlockError> {
        let entries = match self.entries(acl).await {
            Ok(e) => e,
            // The ACL is gone: nothing left to remove.
            Err(e) if e.error == "InvalidNetworkAclID.NotFound" => return Ok(false),
            Err(e) => return Err(e),
        };
        let ours = entries
            .get(&rule_number)
            .is_some_and(|e| e.deny && e.cidr.as_ref() == Some(cidr));
        if !ours {
            return Ok(false);
        }
        match self
            .ec2
            .delete_network_acl_entry()
            .network_acl_id(acl)
            .rule_number(rule_number)
            .egress(false)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            // Another sweeper removed it between the read and the delete.
            Err(e) if e.code().is_some_and(|c| c.contains("NotFound")) => Ok(false),
            Err(e) => Err(ec2_error("DeleteNetworkAclEntry", e)),
        }
    }
}
