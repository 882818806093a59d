//! `nimbus cluster create|list|get|nodes|spend-limit|delete` over the clusters dialect.

use anyhow::{bail, Context};
use clap::Subcommand;
use std::collections::BTreeMap;

use nimbus_api_types::clusters as w;

use crate::tenant::ConnArgs;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Create a cluster: `--dedicated REGION=NODES… --machine-type TYPE`, or `--serverless REGION…`.
    Create {
        name: String,
        /// `REGION=NODES`, once per region (a dedicated cluster).
        #[arg(long = "dedicated", value_name = "REGION=NODES")]
        dedicated: Vec<String>,
        /// Instance type of a dedicated cluster's nodes.
        #[arg(long)]
        machine_type: Option<String>,
        /// A region of a serverless cluster (one node each), repeatable.
        #[arg(long = "serverless", value_name = "REGION")]
        serverless: Vec<String>,
        /// Monthly spend limit of a serverless cluster, in US cents (0: none of its own).
        #[arg(long, default_value_t = 0)]
        spend_limit: i64,
        /// Provider name (`NIMBUS`, or the aliases `GCP`/`AWS`).
        #[arg(long, default_value = "NIMBUS")]
        provider: String,
        /// Wait for capacity (stay CREATING) instead of failing when it is missing.
        #[arg(long)]
        wait_for_capacity: bool,
        /// SSH key names for the nodes (default: all of the organization's).
        #[arg(long = "ssh-key")]
        ssh_keys: Vec<String>,
    },
    /// Clusters of the organization (`--all` adds deleted and failed ones).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Shows one cluster and its nodes.
    Get { id: String },
    /// Nodes and whether they are LIVE.
    Nodes { id: String },
    /// Set a serverless cluster's monthly spend limit (US cents).
    SpendLimit { id: String, cents: i64 },
    /// Deletes a cluster and its nodes.
    Delete { id: String },
}

/// The `spec` of a create request.
fn spec(
    dedicated: &[String],
    machine_type: Option<String>,
    serverless: &[String],
    spend_limit: i64,
) -> anyhow::Result<w::CreateClusterSpec> {
    match (dedicated.is_empty(), serverless.is_empty()) {
        (false, true) => {
            let mut region_nodes = BTreeMap::new();
            for d in dedicated {
                let (r, n) = d.split_once('=').context("--dedicated takes REGION=NODES")?;
                region_nodes.insert(r.to_owned(), n.parse::<i64>().context("NODES must be a number")?);
            }
            let t = machine_type.context("--machine-type is required for a dedicated cluster")?;
            let d = w::DedicatedSpec { region_nodes, machine_type: Some(t), hardware: None };
            Ok(w::CreateClusterSpec { dedicated: Some(d), serverless: None })
        }
        (true, false) => {
            let s = w::ServerlessSpec { regions: serverless.to_vec(), spend_limit: Some(spend_limit) };
            Ok(w::CreateClusterSpec { serverless: Some(s), dedicated: None })
        }
        _ => bail!("give either --dedicated REGION=NODES (with --machine-type) or --serverless REGION"),
    }
}

fn line(c: &w::Cluster) {
    let regions: Vec<&str> = c.regions.iter().map(|r| r.name.as_str()).collect();
    println!("{}  {:<20} {:<10} {:<8} {}", c.id, c.name, c.plan, c.state, regions.join(","));
}

fn print<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn run(conn: &ConnArgs, cmd: ClusterCmd) -> anyhow::Result<()> {
    let c = conn.clusters()?;
    match cmd {
        ClusterCmd::Create { name, dedicated, machine_type, serverless, spend_limit, provider, wait_for_capacity, ssh_keys } => {
            let req = w::CreateCluster {
                name,
                provider,
                spec: spec(&dedicated, machine_type, &serverless, spend_limit)?,
                ssh_key_names: (!ssh_keys.is_empty()).then_some(ssh_keys),
                wait_for_capacity: wait_for_capacity.then_some(true),
            };
            let v = c.create(&req).await?;
            if conn.json {
                return print(&v);
            }
            line(&v);
        }
        ClusterCmd::List { all } => {
            let v = c.list(all).await?;
            if conn.json {
                return print(&v);
            }
            v.iter().for_each(line);
        }
        ClusterCmd::Get { id } => print(&c.get(&id).await?)?,
        ClusterCmd::Nodes { id } => {
            let v = c.nodes(&id).await?;
            if conn.json {
                return print(&v);
            }
            for n in v {
                println!("{:<24} {:<16} {}", n.name, n.region_name, n.status);
            }
        }
        ClusterCmd::SpendLimit { id, cents } => c.set_spend_limit(&id, cents).await?,
        ClusterCmd::Delete { id } => c.delete(&id).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn specs_from_flags() {
        let d = spec(&["us-east-1=3".into()], Some("cpu_1x_small".into()), &[], 0).expect("dedicated");
        let d = serde_json::to_value(d).expect("json");
        assert_eq!(d, json!({"dedicated": {"region_nodes": {"us-east-1": 3}, "machine_type": "cpu_1x_small"}}));
        let s = serde_json::to_value(spec(&[], None, &["us-east-1".into()], 500).expect("serverless")).expect("json");
        assert_eq!(s, json!({"serverless": {"regions": ["us-east-1"], "spendLimit": 500}}));
        assert!(spec(&["us-east-1=3".into()], None, &[], 0).is_err(), "machine type required");
        assert!(spec(&[], None, &[], 0).is_err());
    }
}
