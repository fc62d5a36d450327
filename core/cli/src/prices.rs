//! `mayfly prices`: live prices from a provider's public price list, cached
//! with their date for `mayfly plan` ([`mayfly_data::prices`]).

use std::path::PathBuf;

use anyhow::{Result, bail};
use mayfly_core::config::JobSpec;
use mayfly_data::prices::{day, default_dir, fetched, load, load_all, merge, save, source_line};
use mayfly_data::provider::ProviderHandle;
use mayfly_provider_api::PriceList;

use crate::Ended;
use crate::lookup::{provider_arg, provider_for};

/// `mayfly prices`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum Args {
    /// Fetch the prices of the node types a provider's settings select (and
    /// any --type), in their region, and cache them for `mayfly plan job.toml`.
    Refresh(RefreshArgs),
    /// Show the cached prices.
    Show,
}

/// `mayfly prices refresh`.
#[derive(clap::Args, Debug)]
pub(crate) struct RefreshArgs {
    /// The provider: a name (`aws`, `azure`) or a plugin's path.
    #[arg(required_unless_present = "job")]
    provider: Option<String>,
    /// A setting of that provider (repeatable), as in a job's `[provider]` section.
    #[arg(long = "set", value_name = "KEY=VALUE", conflicts_with = "job")]
    settings: Vec<String>,
    /// Another node type to price (repeatable).
    #[arg(long = "type", value_name = "NODE_TYPE")]
    types: Vec<String>,
    /// Take the provider and its settings from this job file.
    #[arg(long, conflicts_with = "provider")]
    job: Option<PathBuf>,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    match args {
        Args::Refresh(args) => refresh(args),
        Args::Show => show(),
    }
}

fn refresh(args: RefreshArgs) -> Result<Ended> {
    let handle = match (&args.job, &args.provider) {
        (Some(job), _) => provider_for(&JobSpec::load(job)?)?,
        (None, Some(p)) => ProviderHandle::select(&provider_arg(p, &args.settings)?)?,
        (None, None) => bail!("name a provider (`mayfly prices refresh aws`) or a job file (`--job job.toml`)"),
    };
    let info = handle.info();
    let Some(from) = &info.capabilities.prices else {
        bail!("the {} provider has no price list to fetch from (a job's [prices] sets its own)", handle.name());
    };
    let mut types: Vec<String> = info.nodes.iter().flat_map(|n| [n.master.clone(), n.worker.clone()]).collect();
    types.extend(args.types.iter().cloned());
    types.sort();
    types.dedup();
    if types.is_empty() {
        bail!("no node type to price: the {} provider's settings select none; name one with --type", handle.name());
    }
    crate::say(&format!("fetching {} price(s) from the {from}", types.len()));
    let fresh = handle.prices(types.clone())?;
    let dir = default_dir()?;
    // The types an earlier refresh fetched for other jobs stay, with their day.
    let cached = match load(&dir, &fresh.provider, &fresh.region) {
        Ok(cached) => cached,
        Err(e) => {
            println!("warning: {e}: replaced");
            None
        }
    };
    let missing: Vec<&String> = types.iter().filter(|t| !fresh.prices.contains_key(*t)).collect();
    let notes = fresh.notes.clone();
    let list = merge(cached, fresh, &types);
    let path = save(&dir, &list)?;
    print_list(&list);
    for t in &missing {
        println!("warning: the price list has no price of {t} in {}", list.region);
    }
    for note in &notes {
        println!("warning: {note}");
    }
    println!("cached in {}; `mayfly plan` prices {}'s nodes in {} from it", path.display(), list.provider, list.region);
    Ok(Ended::Success)
}

fn print_list(list: &PriceList) {
    println!("{} in {} ({}):", list.provider, list.region, source_line(list, list.fetched_ms));
    println!("  {:<20} {:>14} {:>14}", "node type", "on demand", "spot");
    let usd = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("${p:.4}/h"));
    for (t, p) in &list.prices {
        // A type kept from an earlier refresh says its own day.
        let own_day = match p.fetched_ms {
            Some(_) => format!("  (fetched {})", day(fetched(list, t))),
            None => String::new(),
        };
        println!("  {t:<20} {:>14} {:>14}{own_day}", usd(p.on_demand), usd(p.spot));
    }
}

fn show() -> Result<Ended> {
    let dir = default_dir()?;
    let lists = load_all(&dir);
    if lists.is_empty() {
        println!("no prices cached in {}: `mayfly prices refresh <provider>` fetches them", dir.display());
    }
    for list in lists {
        match list {
            Ok(list) => print_list(&list),
            Err(e) => println!("warning: {e}"),
        }
    }
    Ok(Ended::Success)
}
