//! What Azure VMs cost, for `mayfly plan` (a job's `[prices]` wins): a
//! dated table, and live prices fetched from the Retail Prices API
//! (`mayfly prices refresh`).

use std::collections::BTreeMap;
use std::time::Duration;

use mayfly_provider_api::{ErrorKind, NodePrice, NodeTypes, PriceList, ProviderError};

use crate::fail;

/// When and where [`PAY_AS_YOU_GO`] was read off Azure's public price list.
pub const SOURCE: &str = "Azure pay-as-you-go, Linux, East US, price list of 2025-06";

/// USD per VM-hour of common sizes, as of [`SOURCE`]. Other regions,
/// reservations and spot prices differ: a job's `[prices]` says its own.
pub const PAY_AS_YOU_GO: &[(&str, f64)] = &[
    ("Standard_B2s", 0.0416),
    ("Standard_D2s_v5", 0.096),
    ("Standard_D4s_v5", 0.192),
    ("Standard_D8s_v5", 0.384),
    ("Standard_D2as_v5", 0.086),
    ("Standard_D4as_v5", 0.172),
    ("Standard_F2s_v2", 0.0846),
    ("Standard_F4s_v2", 0.169),
    ("Standard_E2s_v5", 0.126),
];

/// The VM sizes of a job's master and workers, priced.
pub fn node_types(master: &str, worker: &str, location: Option<&str>) -> NodeTypes {
    let nodes = NodeTypes::priced(master, worker, PAY_AS_YOU_GO, SOURCE);
    match location {
        Some(l) => nodes.in_region(&region(l)),
        None => nodes,
    }
}

/// A location as the price list names it (`armRegionName`): ARM takes
/// `West Europe` or `westeurope`, the Retail Prices API's filter only the
/// latter (its values are case-sensitive).
pub fn region(location: &str) -> String {
    location.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase()
}

/// Where `mayfly prices refresh` fetches live prices from.
pub const LIVE_SOURCE: &str = "Azure Retail Prices API";

/// The Retail Prices API (public, unauthenticated).
pub const RETAIL_PRICES: &str = "https://prices.azure.com";

/// The API version asked for.
const API_VERSION: &str = "2023-01-01-preview";

/// Pages read at most for one VM size (a size has a few meters a page).
const MAX_PAGES: usize = 20;

/// Live prices of `sizes` in `location` from the Retail Prices API at
/// `endpoint`: pay-as-you-go Linux (`priceType eq 'Consumption'`, a product
/// that is not `... Windows`, an hourly meter) and spot (its `... Spot`
/// meter); the latest `effectiveStartDate` of each.
pub(crate) async fn fetch(
    endpoint: &str,
    location: &str,
    sizes: &[String],
    patience: Duration,
) -> Result<PriceList, ProviderError> {
    let endpoint = endpoint.trim_end_matches('/');
    let location = region(location);
    let origin = azure_core_legacy::Url::parse(endpoint)
        .map_err(|e| fail(ErrorKind::Config, format!("`provider.prices_endpoint` {endpoint:?}: {e}")))?
        .origin();
    let pipeline = azure_core_legacy::Pipeline::new(
        Some("mayfly-provider-azure"),
        Some(env!("CARGO_PKG_VERSION")),
        azure_core_legacy::ClientOptions::default().retry(azure_core_legacy::RetryOptions::exponential(
            azure_core_legacy::ExponentialRetryOptions::default()
                .max_retries(10u32)
                .max_delay(Duration::from_secs(5))
                .max_total_elapsed(patience),
        )),
        Vec::new(),
        Vec::new(),
    );
    let mut prices = BTreeMap::new();
    for size in sizes {
        let filter = format!(
            "serviceName eq 'Virtual Machines' and armRegionName eq '{}' and armSkuName eq '{}' and priceType eq 'Consumption'",
            location.replace('\'', "''"),
            size.replace('\'', "''")
        );
        let mut url = format!(
            "{endpoint}/api/retail/prices?api-version={API_VERSION}&$filter={}",
            percent_encoding::utf8_percent_encode(&filter, percent_encoding::NON_ALPHANUMERIC)
        );
        let mut meters = Meters::default();
        for page in 0.. {
            if page == MAX_PAGES {
                return Err(fail(ErrorKind::Protocol, format!("{url}: more than {MAX_PAGES} pages for {size}")));
            }
            let body = get(&pipeline, &url).await?;
            let answer: Answer = serde_json::from_slice(&body)
                .map_err(|e| fail(ErrorKind::Protocol, format!("{url}: not a Retail Prices answer ({e})")))?;
            for item in &answer.items {
                meters.take(item, size)?;
            }
            match answer.next_page_link {
                // Only from the same API (`https://prices.azure.com:443/...` is
                // its origin too): a link elsewhere is not followed.
                Some(next) if azure_core_legacy::Url::parse(&next).is_ok_and(|u| u.origin() == origin) => url = next,
                Some(next) => {
                    return Err(fail(
                        ErrorKind::Protocol,
                        format!("{url}: its next page {next:?} is not on {endpoint}"),
                    ));
                }
                None => break,
            }
        }
        let price = NodePrice {
            on_demand: meters.on_demand.map(|(_, p)| p),
            spot: meters.spot.map(|(_, p)| p),
            fetched_ms: None,
        };
        if price.on_demand.is_some() || price.spot.is_some() {
            prices.insert(size.clone(), price);
        }
    }
    Ok(PriceList {
        provider: crate::NAME.into(),
        region: location,
        source: format!("{LIVE_SOURCE} (pay as you go and spot, Linux)"),
        fetched_ms: mayfly_provider_api::now_ms(),
        prices,
        notes: Vec::new(),
    })
}

async fn get(pipeline: &azure_core_legacy::Pipeline, url: &str) -> Result<Vec<u8>, ProviderError> {
    let parsed = azure_core_legacy::Url::parse(url).map_err(|e| fail(ErrorKind::Config, format!("{url}: {e}")))?;
    let mut request = azure_core_legacy::Request::new(parsed, azure_core_legacy::Method::Get);
    let unavailable = |e: azure_core_legacy::Error| fail(ErrorKind::Unavailable, format!("{url}: {e}"));
    let response = pipeline.send(&azure_core_legacy::Context::default(), &mut request).await.map_err(unavailable)?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(unavailable)?.to_vec();
    if !status.is_success() {
        return Err(fail(
            ErrorKind::Unavailable,
            format!("{url}: {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])),
        ));
    }
    Ok(body)
}

/// A page of the Retail Prices API's answer.
#[derive(Debug, serde::Deserialize)]
struct Answer {
    #[serde(rename = "Items", default)]
    items: Vec<Item>,
    #[serde(rename = "NextPageLink", default)]
    next_page_link: Option<String>,
}

/// One meter of the answer (the fields read).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    #[serde(default)]
    currency_code: String,
    retail_price: f64,
    #[serde(default)]
    arm_sku_name: String,
    #[serde(default)]
    product_name: String,
    #[serde(default)]
    sku_name: String,
    #[serde(default)]
    unit_of_measure: String,
    #[serde(default)]
    effective_start_date: String,
    #[serde(default, rename = "type")]
    price_type: String,
}

/// The meters found so far: (effective start date, USD per hour).
#[derive(Debug, Default)]
struct Meters {
    on_demand: Option<(String, f64)>,
    spot: Option<(String, f64)>,
}

impl Meters {
    fn take(&mut self, item: &Item, size: &str) -> Result<(), ProviderError> {
        let linux = !item.product_name.ends_with("Windows");
        if !item.arm_sku_name.eq_ignore_ascii_case(size)
            || !linux
            || item.price_type != "Consumption"
            || item.unit_of_measure != "1 Hour"
            || item.sku_name.ends_with("Low Priority")
        {
            return Ok(());
        }
        if item.currency_code != "USD" {
            return Err(fail(ErrorKind::Protocol, format!("{size}: a price in {:?}, not USD", item.currency_code)));
        }
        let slot = if item.sku_name.ends_with(" Spot") { &mut self.spot } else { &mut self.on_demand };
        if slot.as_ref().is_none_or(|(date, _)| item.effective_start_date > *date) {
            *slot = Some((item.effective_start_date.clone(), item.retail_price));
        }
        Ok(())
    }
}
