//! `nimbus service-account …` over the native API: service accounts and their API keys (the
//! calling key must be ADMIN).

use clap::Subcommand;
use nimbus_api_types::native as w;
use nimbus_client::ListParams;

use crate::tenant::ConnArgs;

#[derive(Subcommand)]
pub enum ServiceAccountCmd {
    /// Create a service account.
    Create {
        name: String,
        /// Comma-separated: ADMIN, CREATE, READ, EDIT, DELETE.
        #[arg(long, value_delimiter = ',', required = true)]
        permissions: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List the organization's service accounts.
    List,
    /// Change a service account's name, description or permissions (its keys follow).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, value_delimiter = ',')]
        permissions: Option<Vec<String>>,
    },
    /// Delete a service account and revoke all of its keys.
    Delete { id: String },
    /// API keys of a service account.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a key; prints its secret, which cannot be shown again.
    Create {
        service_account_id: String,
        #[arg(long)]
        name: Option<String>,
        /// Days until the key stops working (1 to 3650).
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
    /// List a service account's live keys (never their secrets).
    List { service_account_id: String },
    /// Revoke a key.
    Delete { service_account_id: String, key_id: String },
}

fn show<T: serde::Serialize>(conn: &ConnArgs, v: &T, line: impl Fn(&T) -> String) -> anyhow::Result<()> {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        println!("{}", line(v));
    }
    Ok(())
}

fn account_line(a: &w::ServiceAccount) -> String {
    format!("{}  {:<24}  {:<28}  {}", a.id, a.name, a.permissions.join(","), a.description)
}

fn key_line(k: &w::ApiKey) -> String {
    format!(
        "{}  {:<20}  {}…  {:<28}  {}",
        k.id,
        k.name,
        k.prefix,
        k.permissions.join(","),
        k.expires_at.as_deref().unwrap_or("never expires")
    )
}

pub async fn run(conn: &ConnArgs, cmd: ServiceAccountCmd) -> anyhow::Result<()> {
    let c = conn.native()?;
    let all = ListParams { limit: Some(100), ..Default::default() };
    match cmd {
        ServiceAccountCmd::Create { name, permissions, description } => {
            let req = w::ServiceAccountCreate { name, description, permissions };
            show(conn, &c.service_account_create(&req).await?, account_line)
        }
        ServiceAccountCmd::List => {
            let page = c.service_accounts(&all).await?;
            show(conn, &page.items, |l| l.iter().map(account_line).collect::<Vec<_>>().join("\n"))
        }
        ServiceAccountCmd::Update { id, name, description, permissions } => {
            let req = w::ServiceAccountUpdate { name, description, permissions };
            show(conn, &c.service_account_update(&id, &req).await?, account_line)
        }
        ServiceAccountCmd::Delete { id } => show(conn, &c.service_account_delete(&id).await?, |a| format!("deleted {}", a.id)),
        ServiceAccountCmd::Key { cmd: KeyCmd::Create { service_account_id, name, expires_in_days } } => {
            let req = w::ServiceAccountKeyCreate { name, expires_at: None, expires_in_days };
            let k = c.service_account_api_key_create(&service_account_id, &req).await?;
            // The secret alone on stdout, so that `KEY=$(nimbus service-account key create …)` works.
            show(conn, &k, |k| k.secret.clone())?;
            if !conn.json {
                eprintln!("key {} of service account {}: store the secret now, it cannot be shown again", k.key.id, service_account_id);
            }
            Ok(())
        }
        ServiceAccountCmd::Key { cmd: KeyCmd::List { service_account_id } } => {
            let page = c.service_account_api_keys(&service_account_id, &all).await?;
            show(conn, &page.items, |l| l.iter().map(key_line).collect::<Vec<_>>().join("\n"))
        }
        ServiceAccountCmd::Key { cmd: KeyCmd::Delete { service_account_id, key_id } } => {
            show(conn, &c.service_account_api_key_delete(&service_account_id, &key_id).await?, |k| format!("revoked {}", k.id))
        }
    }
}
