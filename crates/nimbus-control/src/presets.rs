//! Instant-deploy presets: named bundles of an instance type (GPUs, vCPUs, RAM, disk) and an
//! image, with the regions that can fit one right now. Configured in `[[presets]]`; without
//! any, one per instance type with the first image. Ids are derived from what a preset is, so
//! they are stable across restarts and replicas.

use nimbus_core::catalog::InstanceType;
use nimbus_core::Error;
use sha2::{Digest, Sha256};

use nimbus_core::ids::InstanceId;

use crate::config::ImageConfig;
use crate::instances::{ImageRef, LaunchSpec};
use crate::scheduler::{self, Request};
use crate::Control;

#[derive(Debug, Clone)]
pub struct Preset {
    /// 32 hex characters.
    pub id: String,
    pub instance_type: InstanceType,
    pub image: ImageConfig,
    /// Regions where a host can take one now, in configuration order.
    pub available_in: Vec<String>,
}

fn preset_id(instance_type: &str, family: &str) -> String {
    hex::encode(&Sha256::digest(format!("nimbus-preset\0{instance_type}\0{family}").as_bytes())[..16])
}

/// Every preset with its availability now.
pub async fn list(c: &Control) -> Result<Vec<Preset>, Error> {
    let cfg = c.config();
    let Some(default_image) = cfg.images.first() else { return Ok(Vec::new()) };
    let wanted: Vec<(String, Option<String>)> = if cfg.presets.is_empty() {
        cfg.instance_types.iter().map(|t| (t.name.clone(), None)).collect()
    } else {
        cfg.presets.iter().map(|p| (p.instance_type.clone(), p.image_family.clone())).collect()
    };
    let hosts = c.store().host_list(None, true).await?;
    let mut out = Vec::new();
    for (type_name, family) in wanted {
        let Some(t) = cfg.instance_type(&type_name) else { continue };
        let image = family.and_then(|f| cfg.images.iter().find(|i| i.family == f)).unwrap_or(default_image);
        let available_in = cfg
            .regions
            .iter()
            .filter(|r| scheduler::place(&hosts, &Request::for_type(&r.name, t)).is_some())
            .map(|r| r.name.clone())
            .collect();
        out.push(Preset { id: preset_id(&t.name, &image.family), instance_type: t.clone(), image: image.clone(), available_in });
    }
    Ok(out)
}

/// One preset by id (32 hex characters).
pub async fn get(c: &Control, id: &str) -> Result<Preset, Error> {
    list(c).await?.into_iter().find(|p| p.id == id).ok_or_else(|| Error::not_found("instant deploy preset", id))
}

/// Launches one instance of preset `id` in the first region that takes it; `spec` carries
/// everything else (keys, user data, name, tags); its region, type, image and quantity are
/// set here.
pub async fn deploy(c: &Control, actor: &nimbus_core::auth::Actor, id: &str, mut spec: LaunchSpec) -> Result<InstanceId, Error> {
    actor.require(nimbus_core::auth::Permission::Create)?;
    let p = get(c, id).await?;
    spec.instance_type = p.instance_type.name.clone();
    spec.image = Some(ImageRef::Family(p.image.family.clone()));
    spec.quantity = 1;
    let mut last = Error::InsufficientCapacity { message: format!("no location has capacity for preset {id} now") };
    for region in p.available_in {
        spec.region = region;
        match crate::instances::launch(c, actor, spec.clone()).await {
            Ok(ids) => return ids.into_iter().next().ok_or_else(|| Error::internal("launch placed nothing")),
            // Taken meanwhile by another launch: the next region may still fit.
            Err(e @ Error::InsufficientCapacity { .. }) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(preset_id("a", "debian-12"), preset_id("a", "debian-12"));
        assert_ne!(preset_id("a", "debian-12"), preset_id("b", "debian-12"));
        assert_eq!(preset_id("a", "debian-12").len(), 32);
    }
}
