//! What the block tests start from on moto: a VPC with one subnet, one
//! instance in it, and the subnet's network ACL. Shared by `block.rs` and
//! `block_run.rs` (a directory of its own, so cargo does not take it for a
//! test target).

// Each test binary uses what it needs of this module.
#![allow(dead_code)]

/// The ids of what [`subnet_with_instance`] made.
pub struct Subnet {
    pub vpc_id: String,
    pub instance: String,
    pub acl: String,
}

/// `net` is the first two octets (`"10.7"`): the VPC is `net.0.0/16`, the
/// subnet `net.1.0/24`; `ipv6` adds an Amazon-provided IPv6 range.
pub async fn subnet_with_instance(ec2: &aws_sdk_ec2::Client, net: &str, ipv6: bool) -> Subnet {
    let vpc_id = ec2
        .create_vpc()
        .cidr_block(format!("{net}.0.0/16"))
        .amazon_provided_ipv6_cidr_block(ipv6)
        .send()
        .await
        .expect("moto: create VPC (scripts/emulators up)")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_owned();
    let subnet_id = create_subnet(ec2, &vpc_id, &format!("{net}.1.0/24")).await;
    let instance = run_instance(ec2, &subnet_id).await;
    let acl = ec2
        .describe_network_acls()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("association.subnet-id")
                .values(&subnet_id)
                .build(),
        )
        .send()
        .await
        .expect("acls")
        .network_acls()[0]
        .network_acl_id()
        .expect("acl id")
        .to_owned();
    Subnet {
        vpc_id,
        instance,
        acl,
    }
}

/// A second subnet `cidr` in `vpc_id` with a network ACL of its own (a new
/// ACL, associated in place of the default) and an instance in it.
pub async fn subnet_with_own_acl(ec2: &aws_sdk_ec2::Client, vpc_id: &str, cidr: &str) -> Subnet {
    let subnet_id = create_subnet(ec2, vpc_id, cidr).await;
    let acl = create_acl(ec2, vpc_id).await;
    let current = ec2
        .describe_network_acls()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("association.subnet-id")
                .values(&subnet_id)
                .build(),
        )
        .send()
        .await
        .expect("acls");
    let association = current
        .network_acls()
        .iter()
        .flat_map(|a| a.associations())
        .find(|a| a.subnet_id() == Some(subnet_id.as_str()))
        .and_then(|a| a.network_acl_association_id())
        .expect("the subnet's ACL association")
        .to_owned();
    ec2.replace_network_acl_association()
        .association_id(association)
        .network_acl_id(&acl)
        .send()
        .await
        .expect("associate the ACL");
    Subnet {
        vpc_id: vpc_id.to_owned(),
        instance: run_instance(ec2, &subnet_id).await,
        acl,
    }
}

/// A subnet `cidr` in `vpc_id`: its id.
pub async fn create_subnet(ec2: &aws_sdk_ec2::Client, vpc_id: &str, cidr: &str) -> String {
    ec2.create_subnet()
        .vpc_id(vpc_id)
        .cidr_block(cidr)
        .send()
        .await
        .expect("subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id")
        .to_owned()
}

/// A network ACL in `vpc_id`, associated with no subnet: its id.
pub async fn create_acl(ec2: &aws_sdk_ec2::Client, vpc_id: &str) -> String {
    ec2.create_network_acl()
        .vpc_id(vpc_id)
        .send()
        .await
        .expect("ACL")
        .network_acl()
        .and_then(|a| a.network_acl_id())
        .expect("acl id")
        .to_owned()
}

/// An instance in `subnet_id`: its id.
pub async fn run_instance(ec2: &aws_sdk_ec2::Client, subnet_id: &str) -> String {
    ec2.run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet_id)
        .send()
        .await
        .expect("instance")
        .instances()[0]
        .instance_id()
        .expect("id")
        .to_owned()
}
