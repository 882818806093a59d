//! NVIDIA's CDI spec (what `nvidia-ctk cdi generate` writes, kind `nvidia.com/gpu`) as the source
//! of an instance's driver files and extra device nodes: where the host has one, it replaces the
//! `ldconfig -p` scan and the `PATH` search of `gpu.rs` as the list of libraries and tools, and
//! names the control nodes and each device's other nodes (`/dev/dri/*`).
//!
//! The spec is host configuration written by root, but it is also often stale (generated at
//! boot, before an operator repartitioned MIG or a GPU was excluded), so it never decides which
//! GPU or capability node an instance gets: those still come from the driver's own numbering
//! (`gpu.rs`), and a selected device whose NVIDIA nodes disagree with them makes the whole spec
//! unused for that plan. Hooks and environment are ignored: the driver runs `ldconfig` inside
//! and makes the soname links itself, and the instance's environment is its image's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use nimbus_proto::MigDeviceRef;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::gpu::{self, DeviceNode, HostGpu};

/// Where the Container Toolkit writes the spec, most authoritative first: CDI gives the dynamic
/// directory (`/var/run/cdi`, the toolkit's current default) precedence over `/etc/cdi`.
pub const SPEC_PATHS: [&str; 4] = ["/var/run/cdi/nvidia.yaml", "/var/run/cdi/nvidia.json", "/etc/cdi/nvidia.yaml", "/etc/cdi/nvidia.json"];
/// The only kind read.
pub const KIND: &str = "nvidia.com/gpu";
/// `cdiVersion` minors understood (`0.5.0` to `0.8.x`): the fields read here mean the same in all.
const VERSIONS: std::ops::RangeInclusive<u32> = 5..=8;
/// The control nodes a spec's top-level edits may give, with their numbers where fixed.
const CONTROL: [&str; 4] = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"];

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub container_edits: Edits,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub container_edits: Edits,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edits {
    #[serde(default)]
    pub device_nodes: Vec<NodeEdit>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub hooks: Vec<IgnoredAny>,
    #[serde(default)]
    pub env: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEdit {
    pub path: String,
    #[serde(default)]
    pub host_path: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// `text` as a spec (`json` for a `.json` file), checked for kind and version.
pub fn parse(text: &str, json: bool) -> Result<Spec, String> {
    let spec: Spec = if json {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        serde_norway::from_str(text).map_err(|e| e.to_string())?
    };
    if spec.kind != KIND {
        return Err(format!("kind {:?} is not {KIND}", spec.kind));
    }
    let minor = spec.cdi_version.strip_prefix("0.").and_then(|r| r.split('.').next()).and_then(|m| m.parse::<u32>().ok());
    if !minor.is_some_and(|m| VERSIONS.contains(&m)) {
        return Err(format!("cdiVersion {:?} is not one of 0.5 to 0.8", spec.cdi_version));
    }
    Ok(spec)
}

/// The host's spec: the first of [`SPEC_PATHS`] that exists under `root` with its path, `Ok(None)`
/// when there is none, an error naming the file when it does not read or parse (the caller then
/// falls back to discovery; a lower-priority file is not tried, as it would be older still).
pub fn find(root: &Path) -> Result<Option<(String, Spec)>, String> {
    for p in SPEC_PATHS {
        let Some(real) = gpu::resolve(root, Path::new(p)) else { continue };
        let text = std::fs::read_to_string(gpu::under(root, &real)).map_err(|e| format!("{p}: {e}"))?;
        return parse(&text, p.ends_with(".json")).map(|s| Some((p.to_owned(), s))).map_err(|e| format!("{p}: {e}"));
    }
    Ok(None)
}

/// `p` if it is absolute and plain (no `.` or `..`, nothing the init script's format cannot carry).
pub fn checked(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    // `components()` drops inner `.`, so the text itself is looked at too.
    let plain = path.is_absolute()
        && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !p.split('/').any(|c| c == "." || c == "..");
    (plain && gpu::safe(p)).then(|| path.to_owned())
}

/// Whether `name` is a shared library's file name (`libcuda.so`, `libcuda.so.550.54.15`).
fn is_shared_library(name: &str) -> bool {
    name.ends_with(".so") || name.contains(".so.")
}

/// What a spec gives one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Device nodes beyond the GPU and capability nodes of `gpu.rs`: the selected devices' other
    /// nodes (`/dev/dri/*`) and the top-level control nodes.
    pub devices: Vec<DeviceNode>,
    /// Host paths of the top-level mounts that are shared libraries, checked and leading to a
    /// regular file under the root.
    pub libraries: Vec<PathBuf>,
    /// (host path, path inside) of the driver's tools the spec mounts.
    pub binaries: Vec<(PathBuf, String)>,
}

/// One MIG device of the instance as `gpu.rs` worked it out: its parent and its two caps nodes.
pub struct WantedMig<'a> {
    pub parent: &'a HostGpu,
    pub mig: &'a MigDeviceRef,
    pub caps: [DeviceNode; 2],
}

/// Whether `path` is one of the NVIDIA nodes only the driver's numbering may decide.
fn is_nvidia_node(path: &str) -> bool {
    path.strip_prefix("/dev/nvidia").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()) || r.starts_with("-caps/"))
}

/// The checked paths of a device's nodes; a node bound elsewhere than its host path is not
/// something `runtime` does (nodes appear inside at their host path), so it is left out.
fn node_paths(d: &Device) -> Vec<String> {
    d.container_edits
        .device_nodes
        .iter()
        .filter_map(|n| {
            let ok = checked(&n.path).is_some_and(|p| p.starts_with("/dev")) && n.host_path.as_ref().is_none_or(|h| *h == n.path);
            if !ok {
                tracing::warn!(device = %d.name, path = %n.path, host_path = ?n.host_path, "CDI device node refused");
            }
            ok.then(|| n.path.clone())
        })
        .collect()
}

/// A spec device by one of `names`, never `all` (that would be every GPU of the host).
fn by_name<'s>(spec: &'s Spec, names: &[String]) -> Option<&'s Device> {
    spec.devices.iter().find(|d| d.name != "all" && names.contains(&d.name))
}

/// The devices of `spec` for whole GPUs `gpus` and MIG devices `migs`, or why the spec cannot be
/// used for them (a device missing, or NVIDIA nodes that disagree with the driver's).
pub fn select(
    spec: &Spec,
    root: &Path,
    majors: &BTreeMap<String, u32>,
    gpus: &[&HostGpu],
    migs: &[WantedMig],
) -> Result<Selection, String> {
    let mut sel = Selection::default();
    let uvm = majors.get("nvidia-uvm").copied();
    let mut extra: Vec<String> = Vec::new();
    for g in gpus {
        let names = [g.index.to_string(), format!("gpu{}", g.index), g.uuid.clone()];
        let d = by_name(spec, &names[..if g.uuid.is_empty() { 2 } else { 3 }])
            .ok_or_else(|| format!("no device for GPU index {} ({})", g.index, g.uuid))?;
        let own = format!("/dev/nvidia{}", g.minor);
        let paths = node_paths(d);
        if !paths.contains(&own) || paths.iter().any(|p| is_nvidia_node(p) && *p != own) {
            return Err(format!("device {:?} has nodes {paths:?}, but GPU index {} is {own}", d.name, g.index));
        }
        extra.extend(paths.into_iter().filter(|p| !is_nvidia_node(p)));
        log_ignored(d);
    }
    for w in migs {
        let caps: BTreeSet<&str> = w.caps.iter().map(|c| c.path.as_str()).collect();
        let parent = format!("/dev/nvidia{}", w.parent.minor);
        let named = by_name(spec, std::slice::from_ref(&w.mig.uuid));
        // `<gpu>:<mig>` names count MIG devices by NVML's index, which the instance's reference
        // does not carry: such an entry is this device when it lists exactly its caps.
        let indexed = || {
            spec.devices.iter().find(|d| {
                let n = d.name.strip_prefix("mig").unwrap_or(&d.name);
                n.split_once(':').is_some_and(|(p, _)| p == w.parent.index.to_string())
                    && node_paths(d).iter().filter(|p| p.starts_with("/dev/nvidia-caps/")).map(String::as_str).collect::<BTreeSet<_>>()
                        == caps
            })
        };
        let d = named.or_else(indexed).ok_or_else(|| format!("no device for MIG device {}", w.mig.uuid))?;
        let paths = node_paths(d);
        let agrees = caps.iter().all(|c| paths.iter().any(|p| p == c))
            && paths.iter().all(|p| !is_nvidia_node(p) || *p == parent || caps.contains(p.as_str()));
        if !agrees {
            return Err(format!("device {:?} has nodes {paths:?}, but MIG device {} is {parent} with {caps:?}", d.name, w.mig.uuid));
        }
        extra.extend(paths.into_iter().filter(|p| !is_nvidia_node(p)));
        log_ignored(d);
    }
    let caps_major = majors.get("nvidia-caps").copied();
    for p in extra {
        // Numbers from the node itself, which must not be a link: `/dev/dri/card1` pointing at
        // another GPU's `/dev/nvidia3` would otherwise pass as a render node.
        let link = std::fs::symlink_metadata(gpu::under(root, &p)).map(|m| m.file_type().is_symlink()).unwrap_or(true);
        let n = (!link).then(|| gpu::node(root, &p, None)).flatten();
        match n {
            Some(n) if n.major == gpu::NVIDIA_MAJOR || Some(n.major) == caps_major || Some(n.major) == uvm => {
                return Err(format!("device node {p} has the numbers of an NVIDIA node ({}:{})", n.major, n.minor));
            }
            Some(n) if !sel.devices.contains(&n) => sel.devices.push(n),
            Some(_) => {}
            None => tracing::warn!(path = %p, "CDI device node left out: missing, a link, or not a character device"),
        }
    }

    let top = &spec.container_edits;
    for n in &top.device_nodes {
        if !CONTROL.contains(&n.path.as_str()) || n.host_path.as_ref().is_some_and(|h| *h != n.path) {
            // Above all never a GPU or capability node that no selected device asked for.
            tracing::warn!(path = %n.path, "CDI top-level device node refused: only the control nodes are taken from there");
            continue;
        }
        let expected = match n.path.as_str() {
            "/dev/nvidiactl" => Some((gpu::NVIDIA_MAJOR, gpu::NVIDIACTL_MINOR)),
            "/dev/nvidia-modeset" => Some((gpu::NVIDIA_MAJOR, gpu::MODESET_MINOR)),
            "/dev/nvidia-uvm" => uvm.map(|m| (m, 0)),
            _ => uvm.map(|m| (m, 1)),
        };
        if let Some(node) = gpu::node(root, &n.path, expected).filter(|d| !sel.devices.contains(d)) {
            sel.devices.push(node);
        }
    }
    if !sel.devices.iter().any(|d| d.path == "/dev/nvidiactl") {
        return Err("its top-level edits give no /dev/nvidiactl".into());
    }

    for m in &top.mounts {
        let Some(host) = checked(&m.host_path) else {
            tracing::warn!(host_path = %m.host_path, "CDI mount refused: not an absolute path without `.` or `..`");
            continue;
        };
        let Some(name) = host.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        let real = gpu::resolve(root, &host);
        let real_name = real.as_ref().and_then(|r| r.file_name()).and_then(|n| n.to_str()).unwrap_or_default();
        if is_shared_library(&name) {
            // The file it leads to must still be a library: a link to anything else is refused.
            if real.is_some() && is_shared_library(real_name) && gpu::safe(real_name) {
                sel.libraries.push(host);
            } else {
                tracing::warn!(host_path = %m.host_path, "CDI library mount refused: it leads to no library under the root");
            }
        } else if gpu::BINARIES.contains(&name.as_str()) {
            match real {
                Some(r) if gpu::safe(&r.display().to_string()) => sel.binaries.push((r, format!("{}/{name}", gpu::BIN_DIR))),
                _ => tracing::warn!(host_path = %m.host_path, "CDI tool mount refused: it leads to no file under the root"),
            }
        } else {
            tracing::debug!(host_path = %m.host_path, container_path = %m.container_path, "CDI mount not used (neither a library nor a driver tool)");
        }
    }
    if !top.hooks.is_empty() || !top.env.is_empty() {
        tracing::debug!(
            hooks = top.hooks.len(),
            env = top.env.len(),
            "CDI hooks and env ignored: the driver makes the soname links and runs ldconfig itself; the environment is the image's"
        );
    }
    Ok(sel)
}

fn log_ignored(d: &Device) {
    let e = &d.container_edits;
    if !e.hooks.is_empty() || !e.env.is_empty() || !e.mounts.is_empty() {
        tracing::debug!(
            device = %d.name,
            hooks = e.hooks.len(),
            env = e.env.len(),
            mounts = e.mounts.len(),
            "CDI device hooks, env and mounts ignored (the driver's own /dev and links are made without them)"
        );
    }
}

/// A spec as `nvidia-ctk cdi generate` (toolkit 1.16, driver 550.54.15) writes it for the fake
/// host of `gpu.rs`'s tests: GPUs 0-2 by index and UUID, GPU 0's two MIG devices by
/// `<gpu>:<mig>` (and A also by UUID), `all`, the control nodes, libraries, a tool, firmware,
/// the persistenced socket and the hooks, shortened.
#[cfg(test)]
pub(crate) const FIXTURE: &str = r#"---
cdiVersion: 0.5.0
containerEdits:
  deviceNodes:
  - path: /dev/nvidia-modeset
  - path: /dev/nvidia-uvm
  - path: /dev/nvidia-uvm-tools
  - path: /dev/nvidiactl
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  hooks:
  - args:
    - nvidia-cdi-hook
    - create-symlinks
    - --link
    - libcuda.so.1::/lib/x86_64-linux-gnu/libcuda.so
    hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
  - args:
    - nvidia-cdi-hook
    - update-ldcache
    - --folder
    - /lib/x86_64-linux-gnu
    - --folder
    - /usr/lib64/nvidia
    hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
  mounts:
  - containerPath: /lib/x86_64-linux-gnu/libcuda.so.550.54.15
    hostPath: /lib/x86_64-linux-gnu/libcuda.so.550.54.15
    options:
    - ro
    - nosuid
    - nodev
    - bind
  - containerPath: /lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15
    hostPath: /lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15
    options: [ro, nosuid, nodev, bind]
  - containerPath: /usr/lib64/nvidia/libnvidia-ptxjitcompiler.so.550.54.15
    hostPath: /usr/lib64/nvidia/libnvidia-ptxjitcompiler.so.550.54.15
    options: [ro, nosuid, nodev, bind]
  - containerPath: /usr/bin/nvidia-smi
    hostPath: /usr/bin/nvidia-smi
    options: [ro, nosuid, nodev, bind]
  - containerPath: /lib/firmware/nvidia/550.54.15/gsp_ga10x.bin
    hostPath: /lib/firmware/nvidia/550.54.15/gsp_ga10x.bin
    options: [ro, nosuid, nodev, bind]
  - containerPath: /run/nvidia-persistenced/socket
    hostPath: /run/nvidia-persistenced/socket
    options: [ro, nosuid, nodev, bind, noexec]
devices:
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/dri/card1
    - path: /dev/dri/renderD128
    hooks:
    - args: [nvidia-cdi-hook, create-symlinks, --link, "../card1::/dev/dri/by-path/pci-0000:1a:00.0-card"]
      hookName: createContainer
      path: /usr/bin/nvidia-cdi-hook
  name: "0"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/dri/card1
    - path: /dev/dri/renderD128
  name: GPU-5d6e1f0a-7b3c-4e2d-9a8b-000000000000
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia2
  name: "1"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
  name: "2"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia-caps/nvidia-cap12
    - path: /dev/nvidia-caps/nvidia-cap13
  name: "0:0"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia-caps/nvidia-cap12
    - path: /dev/nvidia-caps/nvidia-cap13
  name: MIG-gi1-ci0
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia-caps/nvidia-cap21
    - path: /dev/nvidia-caps/nvidia-cap22
  name: "0:1"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia1
    - path: /dev/nvidia2
    - path: /dev/nvidia-caps/nvidia-cap1
    - path: /dev/nvidia-caps/nvidia-cap2
  name: all
kind: nvidia.com/gpu
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_yaml_or_json_and_are_checked() {
        let s = parse(FIXTURE, false).expect("fixture");
        assert_eq!(s.devices.len(), 8);
        assert_eq!(s.container_edits.device_nodes.len(), 4);
        assert_eq!(s.container_edits.mounts.len(), 6);
        assert_eq!(s.container_edits.hooks.len(), 2);
        assert_eq!(s.devices[0].container_edits.hooks.len(), 1);
        let json = r#"{"cdiVersion":"0.8.0","kind":"nvidia.com/gpu","devices":[{"name":"0","containerEdits":
            {"deviceNodes":[{"path":"/dev/nvidia0","type":"c","hostPath":"/dev/nvidia0"}]}}],
            "containerEdits":{"deviceNodes":[{"path":"/dev/nvidiactl"}]}}"#;
        let j = parse(json, true).expect("json");
        assert_eq!(j.devices[0].container_edits.device_nodes[0].host_path.as_deref(), Some("/dev/nvidia0"));
        assert!(parse(&FIXTURE.replace("kind: nvidia.com/gpu", "kind: amd.com/gpu"), false).expect_err("kind").contains("kind"));
        for v in ["0.3.0", "0.9.0", "1.0.0", "x"] {
            let e = parse(&FIXTURE.replace("cdiVersion: 0.5.0", &format!("cdiVersion: {v}")), false).expect_err(v);
            assert!(e.contains("cdiVersion"), "{e}");
        }
        assert!(parse("devices: [oops", false).is_err());
        assert!(parse("{}", true).is_err(), "kind and version are required");
    }

    #[test]
    fn spec_paths_must_be_absolute_and_plain() {
        assert_eq!(checked("/dev/nvidia0"), Some(PathBuf::from("/dev/nvidia0")));
        for bad in ["dev/nvidia0", "/lib/../etc/shadow", "/lib/./libcuda.so", "/lib/x|y.so", "/lib/a\nb.so", "", "../x"] {
            assert_eq!(checked(bad), None, "{bad:?}");
        }
        assert!(is_nvidia_node("/dev/nvidia3") && is_nvidia_node("/dev/nvidia-caps/nvidia-cap1"));
        assert!(!is_nvidia_node("/dev/nvidiactl") && !is_nvidia_node("/dev/nvidia-uvm") && !is_nvidia_node("/dev/dri/card1"));
        assert!(is_shared_library("libcuda.so") && is_shared_library("libcuda.so.550.54.15"));
        assert!(!is_shared_library("gsp_ga10x.bin") && !is_shared_library("libcuda.sox"));
    }
}
