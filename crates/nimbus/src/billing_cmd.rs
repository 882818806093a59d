//! `nimbus billing usage|invoices|estimate` over the native API.

use clap::Subcommand;

use crate::tenant::ConnArgs;

#[derive(Subcommand)]
pub enum BillingCmd {
    /// Usage per resource in a period (default: this month so far).
    Usage {
        /// RFC 3339, e.g. 2026-11-01T00:00:00Z.
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
    },
    /// Monthly invoices, or one with its lines.
    Invoices { id: Option<String> },
    /// Cost of an instance type for some hours, and of what runs now to the end of the month.
    Estimate {
        #[arg(long = "type")]
        instance_type: Option<String>,
        #[arg(long)]
        hours: Option<i64>,
    },
}

fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn run(conn: &ConnArgs, cmd: BillingCmd) -> anyhow::Result<()> {
    let c = conn.native()?;
    match cmd {
        BillingCmd::Usage { start, end } => {
            let u = c.billing_usage(start.as_deref(), end.as_deref()).await?;
            if conn.json {
                return json(&u);
            }
            println!("{} → {}", u.start, u.end);
            println!("{:<9} {:<32} {:<8} {:<20} {:>10} {:>14}", "TYPE", "RESOURCE", "KIND", "SKU", "SECONDS", "USD");
            for l in &u.lines {
                println!("{:<9} {:<32} {:<8} {:<20} {:>10} {:>14}", l.resource_type, l.resource_id, l.kind, l.sku, l.seconds, l.amount_usd);
            }
            println!("total {} USD", u.total_usd);
        }
        BillingCmd::Invoices { id: Some(id) } => {
            let i = c.billing_invoice(&id).await?;
            if conn.json {
                return json(&i);
            }
            println!("invoice {} for {} ({}), total {} USD", i.id, i.period, i.status, i.total_usd);
            for l in &i.lines {
                println!("  {:<20} {:<8} {:>10} s {:>14} USD", l.sku, l.kind, l.seconds, l.amount_usd);
            }
        }
        BillingCmd::Invoices { id: None } => {
            let list = c.billing_invoices().await?;
            if conn.json {
                return json(&list);
            }
            for i in &list {
                println!("{}  {}  {:<6}  {:>14} USD", i.id, i.period, i.status, i.total_usd);
            }
        }
        BillingCmd::Estimate { instance_type, hours } => {
            let e = c.billing_estimate(instance_type.as_deref(), hours).await?;
            if conn.json {
                return json(&e);
            }
            if let Some(p) = &e.proposed {
                println!("{} for {} h: {} USD", p.instance_type, p.hours, p.amount_usd);
            }
            println!("this month: projected {} USD (to {})", e.projected_month_total_usd, e.month_end);
        }
    }
    Ok(())
}
