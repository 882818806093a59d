//! `nimbus admin`: organizations, API keys, host tokens and hosts, straight against the database.

use anyhow::anyhow;
use clap::Subcommand;
use nimbus_control::admin;
use nimbus_core::auth::Permissions;
use nimbus_core::clock::to_rfc3339;

use crate::common::open_control;
use crate::StoreArgs;

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Organizations.
    Org {
        #[command(subcommand)]
        cmd: OrgCmd,
    },
    /// API keys of an organization.
    ApiKey {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Host registration tokens.
    HostToken {
        #[command(subcommand)]
        cmd: HostTokenCmd,
    },
    /// Prints a one-use link that signs an operator in to the web console (hosts, organizations).
    ConsoleLink {
        /// The server's URL as a browser reaches it.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// How long the link is valid: `30m`, `24h`, `7d` (s, m, h, d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Registered hosts and their capacity (`hosts` alone lists them).
    Hosts {
        #[command(subcommand)]
        cmd: Option<HostsCmd>,
    },
}

#[derive(Subcommand)]
pub enum HostsCmd {
    /// Lists hosts and their capacity.
    List,
    /// Lets a host be registered again by a new agent (its secret lost, or leaked): revokes the
    /// host's current secret and prints a one-use token that takes over exactly this host, its
    /// id, capacity and instances kept. Start its agent with `--token` set to it.
    ReEnrol {
        /// Host id, or a name only one host has.
        host: String,
        /// How long the token is valid: `30m`, `24h`, `7d` (s, m, h, d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Subcommand)]
pub enum OrgCmd {
    /// Creates an organization.
    Create {
        name: String,
        #[arg(long)]
        email: Option<String>,
    },
    /// Lists organizations.
    List,
    /// Sets the org's rate-limit plan (free, professional, enterprise, or a configured one).
    SetPlan { org: String, plan: String },
    /// Grants the org a credit (lowers its balance on invoices and billing reports).
    Credit {
        org: String,
        #[arg(long)]
        cents: i64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Creates a key and prints it once.
    Create {
        #[arg(long)]
        org: String,
        /// `ADMIN`, or a comma-separated list of CREATE, READ, EDIT, DELETE.
        #[arg(long, default_value = "ADMIN")]
        permissions: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Lists an organization's keys (never the secrets).
    List {
        #[arg(long)]
        org: String,
    },
    /// Revokes a key at once.
    Revoke {
        #[arg(long)]
        org: String,
        id: String,
    },
}

#[derive(Subcommand)]
pub enum HostTokenCmd {
    /// Mints a token that registers new hosts in a region, and prints it once. A token enrols
    /// only machines that are not registered yet; a registered host re-registers with its own
    /// secret, or after `nimbus admin hosts re-enrol`.
    Create {
        #[arg(long)]
        region: String,
        /// How many hosts it may register.
        #[arg(long, default_value_t = 1)]
        uses: i64,
        /// How long it is valid: `30m`, `24h`, `7d` (s, m, h, d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

pub async fn run(store: &StoreArgs, cmd: AdminCmd) -> anyhow::Result<()> {
    let (c, _) = open_control(store, "server", |_| {}).await?;
    let e = |e: nimbus_core::Error| anyhow!("{}", e.external_message());
    match cmd {
        AdminCmd::Org { cmd: OrgCmd::Create { name, email } } => {
            let o = admin::org_create(&c, &name, email.as_deref()).await.map_err(e)?;
            println!("{}\t{}", o.id, o.name);
        }
        AdminCmd::Org { cmd: OrgCmd::List } => {
            println!("{:<32}  {:<24}  {:<12}  CREATED", "ID", "NAME", "PLAN");
            for o in c.store().org_list().await.map_err(e)? {
                println!("{:<32}  {:<24}  {:<12}  {}", o.id, o.name, o.plan, to_rfc3339(o.created_at));
            }
        }
        AdminCmd::Org { cmd: OrgCmd::SetPlan { org, plan } } => {
            let o = admin::org_find(&c, &org).await.map_err(e)?;
            admin::org_set_plan(&c, &o, &plan).await.map_err(e)?;
            println!("{} is on the {plan} plan", o.name);
        }
        AdminCmd::Org { cmd: OrgCmd::Credit { org, cents, reason } } => {
            let o = admin::org_find(&c, &org).await.map_err(e)?;
            let credit = admin::org_credit(&c, &o, cents, &reason).await.map_err(e)?;
            println!("credited {} USD to {}", nimbus_core::money::Micros(credit.amount_micros), o.name);
        }
        AdminCmd::ApiKey { cmd: KeyCmd::Create { org, permissions, name } } => {
            let org = admin::org_find(&c, &org).await.map_err(e)?;
            let perms = Permissions::parse_list(&permissions).map_err(e)?;
            let (key, plain) = admin::api_key_create(&c, &org, &name, perms, None).await.map_err(e)?;
            eprintln!("API key {} for {} with {} (shown once; store it now):", key.id, org.name, perms.names().join(","));
            println!("{plain}");
        }
        AdminCmd::ApiKey { cmd: KeyCmd::List { org } } => {
            let org = admin::org_find(&c, &org).await.map_err(e)?;
            println!("{:<32}  {:<12}  {:<16}  {:<24}  STATUS", "ID", "PREFIX", "NAME", "PERMISSIONS");
            for k in c.store().api_key_list_by_org(&org.id).await.map_err(e)? {
                let status = if k.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{:<32}  {:<12}  {:<16}  {:<24}  {status}", k.id, k.prefix, k.name, k.permissions.names().join(","));
            }
        }
        AdminCmd::ApiKey { cmd: KeyCmd::Revoke { org, id } } => {
            let org = admin::org_find(&c, &org).await.map_err(e)?;
            admin::api_key_revoke(&c, &org, &id).await.map_err(e)?;
            println!("revoked {id}");
        }
        AdminCmd::HostToken { cmd: HostTokenCmd::Create { region, uses, ttl } } => {
            let ttl_secs = admin::parse_ttl(&ttl).map_err(e)?;
            let t = admin::host_token_create_with(&c, &region, admin::HostTokenLimits { uses, ttl_secs }).await.map_err(e)?;
            eprintln!("host token for {region}, {} use(s), valid until {} (shown once):", t.uses, to_rfc3339(t.expires_at));
            println!("{}", t.secret);
        }
        AdminCmd::ConsoleLink { url, ttl } => {
            let ttl_secs = admin::parse_ttl(&ttl).map_err(e)?;
            let link = nimbus_control::console::operator_link_create(&c, ttl_secs.saturating_mul(1_000_000)).await.map_err(e)?;
            eprintln!("operator console login link, one use, valid for {ttl}:");
            println!("{}/console/login?link={link}", url.trim_end_matches('/'));
        }
        AdminCmd::Hosts { cmd: Some(HostsCmd::ReEnrol { host, ttl }) } => {
            let ttl_secs = admin::parse_ttl(&ttl).map_err(e)?;
            let t = admin::host_reenrol(&c, &host, ttl_secs).await.map_err(e)?;
            let id = t.host_id.as_ref().map(ToString::to_string).unwrap_or_default();
            eprintln!("host {id}: its secret is revoked; this token re-enrols it once, until {} (shown once):", to_rfc3339(t.expires_at));
            println!("{}", t.secret);
        }
        AdminCmd::Hosts { cmd: None | Some(HostsCmd::List) } => {
            println!(
                "{:<32}  {:<12}  {:<6}  {:<10}  {:<12}  {:>11}  {:>15}  GPUS",
                "ID", "REGION", "STATUS", "DRIVER", "MACHINES", "VCPU", "MEM MiB"
            );
            for h in admin::hosts(&c).await.map_err(e)? {
                let free_gpus = h.gpus.iter().filter(|g| g.instance_id.is_none()).count();
                // What it takes: an agent that lists nothing runs containers only.
                let machines =
                    nimbus_core::catalog::Machine::ALL.iter().filter(|m| h.runs(**m)).map(|m| m.as_str()).collect::<Vec<_>>().join(",");
                println!(
                    "{:<32}  {:<12}  {:<6}  {:<10}  {:<12}  {:>5}/{:<5}  {:>7}/{:<7}  {}/{}",
                    h.id,
                    h.region,
                    h.status.as_str(),
                    h.driver,
                    machines,
                    h.used.vcpus,
                    h.total.vcpus,
                    h.used.memory_mib,
                    h.total.memory_mib,
                    h.gpus.len() - free_gpus,
                    h.gpus.len()
                );
                // Operators act on these: one line per GPU that is not simply fine.
                for g in
                    h.gpus.iter().filter(|g| g.health != nimbus_core::gpu_health::Condition::Ok || !g.clean || !g.mig_devices.is_empty())
                {
                    let mig = if g.mig_devices.is_empty() {
                        String::new()
                    } else {
                        let used = g.mig_devices.iter().filter(|m| m.instance_id.is_some()).count();
                        format!(" mig {used}/{} in use", g.mig_devices.len())
                    };
                    let checked = if g.clean { "" } else { " (being checked before its next tenant)" };
                    println!(
                        "  gpu {} {} {}{}{}{}",
                        g.index,
                        g.uuid,
                        g.health.as_str(),
                        mig,
                        checked,
                        g.health_reasons.first().map(|r| format!(": {r}")).unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}
