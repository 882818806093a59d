//! `nimbus host inventory`: what an agent on this machine would report (CPU, memory, disk, GPUs
//! through NVML) and, for GPU indices, the plan the container driver would apply to give an
//! instance those GPUs, without a server or an agent. For operators checking a new GPU host
//! before registering it.

use std::path::PathBuf;

use clap::Subcommand;
use nimbus_driver::container::{gpu, inventory};
use serde_json::json;

#[derive(Subcommand)]
pub enum HostCmd {
    /// Print this machine's inventory as JSON (what `nimbus agent` registers with).
    Inventory {
        /// The disk offered is the size of the file system holding this directory.
        #[arg(long, default_value = "/")]
        data_dir: PathBuf,
        /// Also show the GPU plan of an instance given these NVML indices (repeatable).
        #[arg(long = "gpu-plan", value_name = "INDEX")]
        gpu_plan: Vec<i64>,
    },
}

pub fn run(cmd: HostCmd) -> anyhow::Result<()> {
    match cmd {
        HostCmd::Inventory { data_dir, gpu_plan } => {
            let inv = inventory::read(&data_dir);
            let mut out = json!({ "inventory": inv });
            if !gpu_plan.is_empty() {
                let host = gpu::Host::read();
                if !host.gpus.is_empty() {
                    out["gpu_source"] = json!(host.gpus_source);
                }
                out["host_gpus"] = host.gpus.iter().map(|g| json!({"index": g.index, "minor": g.minor, "bus_id": g.bus_id})).collect();
                out["gpu_plan"] = match host.plan(&gpu_plan) {
                    Ok(p) => json!({
                        "devices": p.devices.iter().map(|d| format!("{} ({}:{})", d.path, d.major, d.minor)).collect::<Vec<_>>(),
                        "files": p.files.iter().map(|(from, to)| format!("{} -> {to}", from.display())).collect::<Vec<_>>(),
                        "links": p.links.iter().map(|(target, link)| format!("{link} -> {target}")).collect::<Vec<_>>(),
                        "proc_entries": p.proc_entries,
                        "source": p.source,
                    }),
                    Err(e) => json!({ "error": e.to_string() }),
                };
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}
