//! `nimbus volume …` and `nimbus snapshot …` over the native API (`nimbus-client`).

use clap::Subcommand;
use nimbus_api_types::native as w;
use nimbus_client::ListParams;

use crate::tenant::ConnArgs;

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Creates a volume of a size in a region.
    Create {
        name: String,
        #[arg(long)]
        size_gib: i64,
        #[arg(long, default_value = "us-east-1")]
        region: String,
    },
    /// Lists your volumes.
    List,
    /// Mount it at /mnt/volumes/<name> inside a running instance.
    Attach {
        id: String,
        #[arg(long)]
        instance: String,
    },
    /// Detaches a volume from its instance.
    Detach { id: String },
    /// Grow it (online when attached).
    Resize {
        id: String,
        #[arg(long)]
        size_gib: i64,
    },
    /// Deletes a detached volume.
    Delete { id: String },
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot an instance's disk (`--instance`) or a volume (`--volume`).
    Create {
        name: String,
        #[arg(long, conflicts_with = "volume", required_unless_present = "volume")]
        instance: Option<String>,
        #[arg(long)]
        volume: Option<String>,
    },
    /// Lists your snapshots.
    List,
    /// Restore into a new volume (volume snapshots) or a new instance (`--type` and `--ssh-key-id`).
    Restore {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        size_gib: Option<i64>,
        #[arg(long = "type")]
        instance_type: Option<String>,
        #[arg(long)]
        ssh_key_id: Vec<String>,
    },
    /// Deletes a snapshot that nothing is being restored from.
    Delete { id: String },
}

fn show<T: serde::Serialize>(conn: &ConnArgs, v: &T, line: impl Fn(&T) -> String) -> anyhow::Result<()> {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        println!("{}", line(v));
    }
    Ok(())
}

fn volume_line(v: &w::Volume) -> String {
    format!("{}  {:<20}  {:>5} GiB  {:<10}  {}", v.id, v.name, v.size_gib, v.status, v.instance_id.as_deref().unwrap_or("-"))
}

fn snapshot_line(s: &w::Snapshot) -> String {
    format!("{}  {:<20}  {:<9}  {:<8} {}  {} bytes", s.id, s.name, s.status, s.source_type, s.source_id, s.size_bytes)
}

pub async fn volume(conn: &ConnArgs, cmd: VolumeCmd) -> anyhow::Result<()> {
    let c = conn.native()?;
    match cmd {
        VolumeCmd::Create { name, size_gib, region } => {
            show(conn, &c.volume_create(&w::VolumeCreate { name, region, size_gib }).await?, volume_line)
        }
        VolumeCmd::List => {
            let page = c.volumes(&ListParams { limit: Some(100), ..Default::default() }).await?;
            show(conn, &page.items, |l| l.iter().map(volume_line).collect::<Vec<_>>().join("\n"))
        }
        VolumeCmd::Attach { id, instance } => show(conn, &c.volume_attach(&id, &instance).await?, volume_line),
        VolumeCmd::Detach { id } => show(conn, &c.volume_detach(&id).await?, volume_line),
        VolumeCmd::Resize { id, size_gib } => show(conn, &c.volume_resize(&id, size_gib).await?, volume_line),
        VolumeCmd::Delete { id } => show(conn, &c.volume_delete(&id).await?, volume_line),
    }
}

pub async fn snapshot(conn: &ConnArgs, cmd: SnapshotCmd) -> anyhow::Result<()> {
    let c = conn.native()?;
    match cmd {
        SnapshotCmd::Create { name, instance, volume } => {
            show(conn, &c.snapshot_create(&w::SnapshotCreate { name, instance_id: instance, volume_id: volume }).await?, snapshot_line)
        }
        SnapshotCmd::List => {
            let page = c.snapshots(&ListParams { limit: Some(100), ..Default::default() }).await?;
            show(conn, &page.items, |l| l.iter().map(snapshot_line).collect::<Vec<_>>().join("\n"))
        }
        SnapshotCmd::Restore { id, name, size_gib, instance_type, ssh_key_id } => {
            let req = w::SnapshotRestore { name, size_gib, instance_type, ssh_keys: (!ssh_key_id.is_empty()).then_some(ssh_key_id) };
            show(conn, &c.snapshot_restore(&id, &req).await?, |r| match (&r.volume, &r.instance) {
                (Some(v), _) => format!("volume {}", volume_line(v)),
                (_, Some(i)) => format!("instance {}  {}  {}", i.id, i.status, i.instance_type),
                _ => String::new(),
            })
        }
        SnapshotCmd::Delete { id } => show(conn, &c.snapshot_delete(&id).await?, snapshot_line),
    }
}
