//! The static assets, embedded in the binary: served under `/assets/`
//! with a content hash in the URL so that browsers may cache them forever.

use std::borrow::Cow;
use std::sync::OnceLock;

use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Files;

/// One asset, ready to serve.
#[derive(Debug, Clone)]
pub struct Asset {
    pub body: Cow<'static, [u8]>,
    pub content_type: &'static str,
}

/// The asset at `path` (as `url` names it, hash and all), if there is one.
pub fn get(path: &str) -> Option<Asset> {
    let (name, hash) = path.rsplit_once('.').and_then(|(stem, ext)| {
        let (name, hash) = stem.rsplit_once('.')?;
        Some((format!("{name}.{ext}"), hash))
    })?;
    if hash != short_hash(&name)? {
        return None;
    }
    let file = Files::get(&name)?;
    Some(Asset {
        body: file.data,
        content_type: content_type(&name),
    })
}

/// The URL of an asset by its file name, such as `muster.css`: the name
/// with the first 16 hex digits of its SHA-256 before the extension.
/// Panics on a name that is not embedded: that is a bug in a template.
pub fn url(name: &str) -> String {
    let hash = short_hash(name).unwrap_or_else(|| panic!("no asset named {name}"));
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    format!("/assets/{stem}.{hash}.{ext}")
}

fn short_hash(name: &str) -> Option<&'static str> {
    static HASHES: OnceLock<Vec<(String, String)>> = OnceLock::new();
    let hashes = HASHES.get_or_init(|| {
        Files::iter()
            .filter_map(|name| {
                let file = Files::get(&name)?;
                let hash: String = file.metadata.sha256_hash()[..8]
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                Some((name.into_owned(), hash))
            })
            .collect()
    });
    hashes
        .iter()
        .find(|(known, _)| known == name)
        .map(|(_, hash)| hash.as_str())
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_content_hash_and_resolve_back() {
        let url = url("muster.css");
        assert!(
            url.starts_with("/assets/muster.") && url.ends_with(".css"),
            "{url}"
        );
        let asset = get(url.trim_start_matches("/assets/")).expect("the asset resolves");
        assert_eq!(asset.content_type, "text/css; charset=utf-8");
        assert!(!asset.body.is_empty());
    }

    #[test]
    fn a_stale_or_unknown_hash_is_not_served() {
        assert!(get("muster.0000000000000000.css").is_none());
        assert!(get("muster.css").is_none());
        assert!(get("../Cargo.toml").is_none());
    }
}
