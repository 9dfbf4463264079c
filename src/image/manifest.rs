//! manifest.json: what a node's images are made of and from (written by the build), and the
//! part of it the up-to-date check, `why_rebuild` and `verify` read back.

use super::*;

#[derive(Serialize)]
pub(super) struct ManifestInput<'a> {
    pub(super) name: &'a str,
    pub(super) version: &'a str,
    pub(super) url: &'a str,
    pub(super) size: u64,
    pub(super) sha256: &'a str,
    pub(super) sha512: &'a str,
    pub(super) signed_by: Option<&'a str>,
}

#[derive(Serialize)]
pub(super) struct ManifestPartition {
    pub(super) name: &'static str,
    pub(super) type_guid: &'static str,
    pub(super) partition_guid: String,
    pub(super) filesystem: &'static str,
    pub(super) filesystem_id: String,
    pub(super) first_lba: u64,
    pub(super) last_lba: u64,
}

#[derive(Serialize)]
pub(super) struct Manifest<'a> {
    pub(super) manifest_version: u32,
    pub(super) imgbuild: &'static str,
    /// What the images are a function of (see [`build_key`]): equal keys, identical images.
    pub(super) build_key: &'a str,
    pub(super) node: &'a str,
    pub(super) hostname: &'a str,
    pub(super) ip: String,
    pub(super) recipe_sha256: &'a str,
    pub(super) source_date_epoch: u64,
    pub(super) components: BTreeMap<&'a str, &'a str>,
    pub(super) inputs: Vec<ManifestInput<'a>>,
    pub(super) boot: BTreeMap<&'static str, String>,
    pub(super) disk_size: u64,
    pub(super) disk_guid: String,
    pub(super) partitions: Vec<ManifestPartition>,
    pub(super) base_packages: BTreeMap<String, String>,
    /// The build key's ingredients, item by item (see [`key_parts`]).
    pub(super) build_inputs: BTreeMap<String, String>,
    pub(super) outputs: Vec<Output>,
}

/// A manifest.json as read back by the up-to-date check, `why_rebuild` and `verify`: the
/// fields of [`Manifest`] they need (the others are ignored; all may be missing, in a manifest of
/// an older imgbuild).
#[derive(serde::Deserialize, Default)]
pub struct ManifestRecord {
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub build_key: String,
    pub build_inputs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub outputs: Vec<Output>,
}

impl ManifestRecord {
    pub fn read(dir: &Path) -> Result<ManifestRecord> {
        let path = dir.join("manifest.json");
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a manifest", path.display()))
    }
}
