//! Live prices: what a provider fetched from its platform's public price list
//! (`mayfly prices refresh`), cached with their date under mayfly's cache
//! directory, one file per provider and region
//! (`<cache>/prices/<provider>-<region>.json`). `mayfly plan` (and a
//! bootstrap on the same machine) prices nodes from them when they cover the
//! job's region and node types, else from the table the provider was built
//! with; either way the plan says which source and date it used.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use mayfly_model::units::Utc;
use mayfly_provider_api::{Millis, NodeTypes, PriceList};

/// Prices fetched longer ago than this are still used, with a warning.
pub const STALE_AFTER_DAYS: u64 = 30;

/// A price cache that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not a price list (`mayfly prices refresh` rewrites it).
    #[error("{}: not a price list ({message}); `mayfly prices refresh` writes it anew", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// No cache directory: neither `MAYFLY_CACHE_DIR`, `XDG_CACHE_HOME` nor `HOME` is set.
    #[error("no cache directory for prices: set MAYFLY_CACHE_DIR (or HOME)")]
    NoCacheDir,
}

/// Where prices are cached: `<mayfly's cache>/prices`.
pub fn default_dir() -> Result<PathBuf, PricesError> {
    mayfly_sandbox::default_cache_root().map(|root| root.join("prices")).ok_or(PricesError::NoCacheDir)
}

/// The file of `provider`'s prices in `region`.
pub fn file(dir: &Path, provider: &str, region: &str) -> PathBuf {
    let safe = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
    };
    dir.join(format!("{}-{}.json", safe(provider), safe(region)))
}

/// Writes `list` to its file in `dir` (whole or not at all: written aside,
/// then renamed over the old one); answers the file.
pub fn save(dir: &Path, list: &PriceList) -> Result<PathBuf, PricesError> {
    let path = file(dir, &list.provider, &list.region);
    let io = |source| PricesError::Io { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let json = serde_json::to_vec_pretty(list)
        .map_err(|e| PricesError::Malformed { path: path.clone(), message: e.to_string() })?;
    let aside = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&aside, json).map_err(io)?;
    std::fs::rename(&aside, &path).map_err(|e| {
        let _ = std::fs::remove_file(&aside);
        io(e)
    })?;
    Ok(path)
}

/// `provider`'s cached prices in `region`, if `mayfly prices refresh` fetched any.
pub fn load(dir: &Path, provider: &str, region: &str) -> Result<Option<PriceList>, PricesError> {
    let path = file(dir, provider, region);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PricesError::Io { path, source }),
    };
    let list: PriceList = serde_json::from_slice(&bytes)
        .map_err(|e| PricesError::Malformed { path: path.clone(), message: e.to_string() })?;
    if list.provider != provider || list.region != region {
        return Err(PricesError::Malformed {
            path,
            message: format!("it holds {}'s prices in {}", list.provider, list.region),
        });
    }
    Ok(Some(list))
}

/// Every price list cached in `dir`, in file name order; a file that is not
/// one is an error of its own.
pub fn load_all(dir: &Path) -> Vec<Result<PriceList, PricesError>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(|source| PricesError::Io { path: path.clone(), source })?;
            serde_json::from_slice(&bytes).map_err(|e| PricesError::Malformed { path, message: e.to_string() })
        })
        .collect()
}

/// `fresh` (a refresh's answer for the node types it `asked` for) merged
/// into `cached` (what an earlier refresh of the same provider and region
/// fetched): the types it did not ask for keep their prices, with their own
/// date; the types it asked for are its answer's (absent if the price list
/// no longer has them).
pub fn merge(cached: Option<PriceList>, mut fresh: PriceList, asked: &[String]) -> PriceList {
    let Some(cached) = cached.filter(|c| c.provider == fresh.provider && c.region == fresh.region) else {
        return fresh;
    };
    for (node_type, mut price) in cached.prices {
        if !asked.contains(&node_type) && !fresh.prices.contains_key(&node_type) {
            price.fetched_ms = Some(price.fetched_ms.unwrap_or(cached.fetched_ms));
            fresh.prices.insert(node_type, price);
        }
    }
    fresh
}

/// When `node_type`'s price in `list` was fetched.
pub fn fetched(list: &PriceList, node_type: &str) -> Millis {
    list.prices.get(node_type).and_then(|p| p.fetched_ms).unwrap_or(list.fetched_ms)
}

/// The UTC day of an instant (`2026-12-05`).
pub fn day(ms: Millis) -> String {
    let utc = Utc(ms).to_string();
    utc.split(' ').next().unwrap_or_default().to_owned()
}

/// How a price list's source reads in a plan: where from, the region, the
/// day (of `fetched_ms`) it was fetched.
pub fn source_line(list: &PriceList, fetched_ms: Millis) -> String {
    format!("{}, {}, fetched {}", list.source, list.region, day(fetched_ms))
}

/// The node types a provider declares, priced as a plan prices them.
#[derive(Debug, Clone, PartialEq)]
pub struct Priced {
    /// The declared node types, with the fetched prices in place of the
    /// built-in table's where the cache has them.
    pub nodes: Option<NodeTypes>,
    /// What a plan should warn about: a cache that could not be read, prices
    /// fetched long ago, a node type the fetched list lacks.
    pub warnings: Vec<String>,
    /// Whether the fetched prices are used (else the provider's table).
    pub fetched: bool,
}

/// `declared` (what the provider answered), with the on-demand prices of the
/// cached list for its region in place of its built-in table's, when the list
/// prices both its node types (or the job's `[prices]`, `overrides`, prices
/// those it lacks); the source then names the list and the day it was
/// fetched (the older of the two types'). A list that lacks one is not used
/// (a plan has one source per answer), and the warning says so.
pub fn priced(
    dir: Option<&Path>,
    provider: &str,
    declared: Option<NodeTypes>,
    overrides: &BTreeMap<String, f64>,
    now: Millis,
) -> Priced {
    let mut warnings = Vec::new();
    let unchanged = |nodes, warnings| Priced { nodes, warnings, fetched: false };
    let Some(mut nodes) = declared else { return unchanged(None, warnings) };
    let (Some(dir), Some(region)) = (dir, nodes.region.clone()) else { return unchanged(Some(nodes), warnings) };
    let refresh = "`mayfly prices refresh --job <the job file>` fetches them anew";
    let list = match load(dir, provider, &region) {
        Ok(Some(list)) => list,
        Ok(None) => return unchanged(Some(nodes), warnings),
        Err(e) => {
            warnings.push(format!("prices: {e}; the provider's built-in table is used"));
            return unchanged(Some(nodes), warnings);
        }
    };
    let types = [nodes.master.clone(), nodes.worker.clone()];
    let lacking =
        types.iter().find(|t| !overrides.contains_key(*t) && list.prices.get(*t).is_none_or(|p| p.on_demand.is_none()));
    if let Some(node_type) = lacking {
        warnings.push(format!(
            "prices: the list fetched for {region} has no on-demand price of {node_type}, so the provider's \
             built-in table is used; {refresh}"
        ));
        return unchanged(Some(nodes), warnings);
    }
    let oldest = types.iter().filter(|t| list.prices.contains_key(*t)).map(|t| fetched(&list, t)).min();
    let oldest = oldest.unwrap_or(list.fetched_ms);
    let age_days = now.saturating_sub(oldest) / 86_400_000;
    if age_days > STALE_AFTER_DAYS {
        warnings.push(format!("prices: {provider}'s for {region} were fetched {age_days} days ago; {refresh}"));
    }
    nodes.prices = list.prices.iter().filter_map(|(t, p)| Some((t.clone(), p.on_demand?))).collect();
    nodes.prices_source = source_line(&list, oldest);
    Priced { nodes: Some(nodes), warnings, fetched: true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_provider_api::NodePrice;

    const DAY: u64 = 86_400_000;

    fn list(fetched_ms: u64) -> PriceList {
        PriceList {
            provider: "aws".into(),
            region: "eu-west-1".into(),
            source: "AWS Price List Query API, on demand, Linux".into(),
            fetched_ms,
            prices: BTreeMap::from([
                ("m5.large".to_owned(), NodePrice { on_demand: Some(0.107), spot: Some(0.04), fetched_ms: None }),
                ("c5.large".to_owned(), NodePrice { on_demand: Some(0.096), spot: None, fetched_ms: None }),
            ]),
            notes: Vec::new(),
        }
    }

    fn declared(worker: &str) -> NodeTypes {
        NodeTypes::priced("m5.large", worker, &[("m5.large", 0.096), ("c5.large", 0.085)], "a 2025 table")
            .in_region("eu-west-1")
    }

    fn none() -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    #[test]
    fn fetched_prices_replace_the_table_and_say_their_day() {
        let dir = tempfile::tempdir().unwrap();
        let fetched = 1_764_892_800_000; // 2025-12-05
        let path = save(dir.path(), &list(fetched)).unwrap();
        assert_eq!(path, dir.path().join("aws-eu-west-1.json"));
        let p = priced(Some(dir.path()), "aws", Some(declared("c5.large")), &none(), fetched + DAY);
        let nodes = p.nodes.unwrap();
        assert_eq!(nodes.prices.get("m5.large"), Some(&0.107));
        assert_eq!(nodes.prices.get("c5.large"), Some(&0.096));
        assert_eq!(nodes.prices_source, "AWS Price List Query API, on demand, Linux, eu-west-1, fetched 2025-12-05");
        assert!(p.warnings.is_empty() && p.fetched, "{:?}", p.warnings);
    }

    #[test]
    fn a_type_the_job_prices_itself_need_not_be_in_the_list() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &list(0)).unwrap();
        let job = BTreeMap::from([("r5.large".to_owned(), 0.05)]);
        let p = priced(Some(dir.path()), "aws", Some(declared("r5.large")), &job, DAY);
        assert!(p.fetched && p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(p.nodes.unwrap().prices.get("m5.large"), Some(&0.107));
    }

    #[test]
    fn a_refresh_keeps_the_types_it_did_not_ask_for_with_their_day() {
        let mut earlier = list(DAY);
        earlier.prices.insert("r5.large".into(), NodePrice { on_demand: Some(0.126), spot: None, fetched_ms: None });
        let mut fresh = list(10 * DAY);
        fresh.prices.remove("c5.large");
        let asked = ["m5.large".to_owned(), "c5.large".to_owned()];
        let merged = merge(Some(earlier), fresh, &asked);
        // Asked and answered: today's; asked and gone: gone; not asked: kept, with its day.
        assert_eq!(fetched(&merged, "m5.large"), 10 * DAY);
        assert!(!merged.prices.contains_key("c5.large"));
        assert_eq!(merged.prices["r5.large"].on_demand, Some(0.126));
        assert_eq!(fetched(&merged, "r5.large"), DAY);
        // A plan on m5.large and r5.large says the older day.
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &merged).unwrap();
        let p = priced(Some(dir.path()), "aws", Some(declared("r5.large")), &none(), 10 * DAY);
        assert!(p.nodes.unwrap().prices_source.ends_with("fetched 1970-01-02"));
    }

    #[test]
    fn without_a_cache_for_the_region_the_table_stays() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &list(0)).unwrap();
        let elsewhere = declared("c5.large").in_region("us-east-1");
        let p = priced(Some(dir.path()), "aws", Some(elsewhere.clone()), &none(), DAY);
        assert_eq!(p.nodes, Some(elsewhere));
        assert!(p.warnings.is_empty());
        let p = priced(None, "aws", Some(declared("c5.large")), &none(), DAY);
        assert_eq!(p.nodes.unwrap().prices_source, "a 2025 table");
    }

    #[test]
    fn old_prices_a_type_the_list_lacks_and_a_broken_file_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &list(0)).unwrap();
        let p = priced(Some(dir.path()), "aws", Some(declared("r5.large")), &none(), 45 * DAY);
        assert!(p.warnings.iter().any(|w| w.contains("no on-demand price of r5.large")), "{:?}", p.warnings);
        assert!(!p.fetched);
        assert_eq!(p.nodes.unwrap().prices_source, "a 2025 table", "a list that lacks a type is not used");
        let p = priced(Some(dir.path()), "aws", Some(declared("c5.large")), &none(), 45 * DAY);
        assert!(p.warnings.iter().any(|w| w.contains("fetched 45 days ago")), "{:?}", p.warnings);
        assert!(p.warnings.iter().any(|w| w.contains("`mayfly prices refresh --job <the job file>`")));
        assert!(p.nodes.unwrap().prices_source.ends_with("fetched 1970-01-01"));

        std::fs::write(dir.path().join("aws-eu-west-1.json"), b"{ not json").unwrap();
        let p = priced(Some(dir.path()), "aws", Some(declared("c5.large")), &none(), DAY);
        assert_eq!(p.nodes.unwrap().prices_source, "a 2025 table");
        assert!(p.warnings[0].contains("aws-eu-west-1.json: not a price list"), "{:?}", p.warnings);
        assert!(matches!(load(dir.path(), "aws", "eu-west-1"), Err(PricesError::Malformed { .. })));
    }

    #[test]
    fn a_file_holding_another_region_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = save(dir.path(), &list(0)).unwrap();
        std::fs::copy(&path, dir.path().join("aws-us-east-1.json")).unwrap();
        let e = load(dir.path(), "aws", "us-east-1").unwrap_err().to_string();
        assert!(e.contains("holds aws's prices in eu-west-1"), "{e}");
        assert_eq!(load_all(dir.path()).len(), 2);
    }
}
