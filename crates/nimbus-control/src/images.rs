//! Images. The operator configures them; the store keeps one row each. The Lambda dialect lists
//! every image once per region that has capacity (Lambda images are regional, and dstack's
//! catalog collector learns regions from `/images`), with a per-region id derived from the image
//! id, so that any listed id can be launched in its region.

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::ids::ImageId;
use nimbus_core::model::Image;
use nimbus_core::Error;
use nimbus_store::Store;
use sha2::{Digest, Sha256};

use crate::instances::ImageRef;
use crate::Control;

pub(crate) async fn sync_configured(c: &Control) -> Result<(), Error> {
    let now = c.now();
    let mut tx = c.store().begin().await?;
    for img in &c.config().images {
        let row = Image {
            id: ImageId::generate(),
            name: img.name.clone(),
            description: img.description.clone(),
            family: img.family.clone(),
            version: img.version.clone(),
            architecture: img.architecture.clone(),
            created_at: now,
            updated_at: now,
        };
        Store::image_upsert_in_txn(&mut tx, &row).await?;
    }
    Store::commit(tx).await
}

/// The id an image is listed under in one region.
pub fn regional_id(image: &ImageId, region: &str) -> String {
    let d = Sha256::digest(format!("{}:{region}", image.as_str()).as_bytes());
    hex::encode(&d[..16])
}

/// Resolves a launch's image reference (or the default: the first configured image) in `region`.
pub async fn resolve(c: &Control, r: Option<&ImageRef>, region: &str) -> Result<ImageId, Error> {
    let images = c.store().image_list().await?;
    let found = match r {
        None => {
            let first = c.config().images.first().map(|i| i.name.as_str()).unwrap_or_default();
            images.iter().find(|i| i.name == first)
        }
        Some(ImageRef::Id(id)) => images.iter().find(|i| i.id.as_str() == id || regional_id(&i.id, region) == *id),
        Some(ImageRef::Family(f)) => images.iter().filter(|i| i.family == *f).max_by_key(|i| i.updated_at),
    };
    match (found, r) {
        (Some(i), _) => Ok(i.id.clone()),
        (None, Some(ImageRef::Id(id))) => Err(Error::not_found("image", id)),
        (None, Some(ImageRef::Family(f))) => Err(Error::not_found("image family", f)),
        (None, None) => Err(Error::internal("no image configured")),
    }
}

/// The configured images (READ).
pub async fn list(c: &Control, actor: &Actor) -> Result<Vec<Image>, Error> {
    actor.require(Permission::Read)?;
    c.store().image_list().await
}
