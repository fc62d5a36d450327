//! What EC2 instances cost, for `mayfly plan` (a job's `[prices]` wins):
//! a dated table, and live prices fetched from AWS (`mayfly prices refresh`).

use std::collections::BTreeMap;

use mayfly_provider_api::{ErrorKind, NodePrice, NodeTypes, PriceList, PricesRequest, ProviderError};

use crate::{Aws, api_err, fail};

/// When and where [`ON_DEMAND`] was read off AWS's public price list.
pub const SOURCE: &str = "AWS on-demand, Linux, us-east-1, price list of 2025-06";

/// USD per instance-hour of common sizes, as of [`SOURCE`]. Other regions,
/// savings plans and spot prices differ: a job's `[prices]` says its own.
pub const ON_DEMAND: &[(&str, f64)] = &[
    ("t3.micro", 0.0104),
    ("t3.small", 0.0208),
    ("t3.medium", 0.0416),
    ("t3.large", 0.0832),
    ("t3.xlarge", 0.1664),
    ("m5.large", 0.096),
    ("m5.xlarge", 0.192),
    ("m5.2xlarge", 0.384),
    ("m6i.large", 0.096),
    ("m6i.xlarge", 0.192),
    ("m7g.large", 0.0816),
    ("c5.large", 0.085),
    ("c5.xlarge", 0.17),
    ("c6i.large", 0.085),
    ("c6i.xlarge", 0.17),
    ("c7g.large", 0.0725),
    ("r5.large", 0.126),
    ("r6i.large", 0.126),
];

/// The instance types of a job's master and workers, priced.
pub fn node_types(master: &str, worker: &str, region: &str) -> NodeTypes {
    NodeTypes::priced(master, worker, ON_DEMAND, SOURCE).in_region(region)
}

/// Where `mayfly prices refresh` fetches live prices from.
pub const LIVE_SOURCE: &str = "AWS Price List Query API";

/// The region the Price List Query API answers in (it has a few; this one
/// lists every region's prices).
const PRICING_REGION: &str = "us-east-1";

/// Pages of one answer read at most (a type has one product with the
/// filters; a price list that keeps paging is not read forever).
const MAX_PAGES: usize = 20;

/// Live prices of `request`'s instance types in `aws`'s region: on demand
/// from the Price List Query API (`GetProducts`, Linux, shared tenancy, no
/// pre-installed software, used capacity), and spot from EC2's
/// `DescribeSpotPriceHistory` (the lowest of the region's zones now).
pub(crate) async fn fetch(aws: &Aws, request: PricesRequest) -> Result<PriceList, ProviderError> {
    let clients = aws.clients().await?;
    let config = aws_sdk_pricing::config::Builder::from(&clients.config)
        .region(aws_sdk_pricing::config::Region::new(PRICING_REGION))
        .build();
    let pricing = aws_sdk_pricing::Client::from_conf(config);
    let (mut prices, mut notes) = (BTreeMap::new(), Vec::new());
    for instance_type in &request.node_types {
        let on_demand = on_demand(&pricing, &aws.region, instance_type).await?;
        // Spot is extra: a refused spot history keeps the on-demand prices.
        let spot = match spot(&clients.ec2, instance_type).await {
            Ok(spot) => spot,
            Err(e) => {
                notes.push(format!("no spot price of {instance_type}: {}", e.message));
                None
            }
        };
        if on_demand.is_some() || spot.is_some() {
            prices.insert(instance_type.clone(), NodePrice { on_demand, spot, fetched_ms: None });
        }
    }
    Ok(PriceList {
        provider: crate::NAME.into(),
        region: aws.region.clone(),
        source: format!("{LIVE_SOURCE} (on demand, Linux) and EC2 spot price history"),
        fetched_ms: mayfly_provider_api::now_ms(),
        prices,
        notes,
    })
}

async fn on_demand(
    pricing: &aws_sdk_pricing::Client,
    region: &str,
    instance_type: &str,
) -> Result<Option<f64>, ProviderError> {
    use aws_sdk_pricing::types::{Filter, FilterType};
    let term = |field: &str, value: &str| {
        Filter::builder()
            .r#type(FilterType::TermMatch)
            .field(field)
            .value(value)
            .build()
            .map_err(|e| fail(ErrorKind::Other, format!("a price filter: {e}")))
    };
    let filters = vec![
        term("instanceType", instance_type)?,
        term("regionCode", region)?,
        term("operatingSystem", "Linux")?,
        term("tenancy", "Shared")?,
        term("preInstalledSw", "NA")?,
        term("capacitystatus", "Used")?,
    ];
    let mut lowest: Option<f64> = None;
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = pricing
            .get_products()
            .service_code("AmazonEC2")
            .format_version("aws_v1")
            .set_filters(Some(filters.clone()))
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| {
                api_err(
                    &format!("GetProducts({instance_type} in {region})"),
                    aws_sdk_pricing::error::DisplayErrorContext(e),
                )
            })?;
        for product in page.price_list() {
            let price = hourly_on_demand(product).map_err(|e| {
                fail(ErrorKind::Protocol, format!("GetProducts({instance_type} in {region}): a product {e}"))
            })?;
            if let Some(p) = price.filter(|p| *p > 0.0) {
                lowest = Some(lowest.map_or(p, |l| l.min(p)));
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Ok(lowest),
        }
    }
    Ok(lowest)
}

/// A product of the price list (a JSON document in a string) read for its
/// on-demand hourly USD price: `terms.OnDemand.*.priceDimensions.*` whose
/// unit is hours; `None` if it has none.
pub fn hourly_on_demand(product: &str) -> Result<Option<f64>, String> {
    let doc: serde_json::Value = serde_json::from_str(product).map_err(|e| format!("is not JSON: {e}"))?;
    let Some(terms) = doc.pointer("/terms/OnDemand").and_then(|t| t.as_object()) else { return Ok(None) };
    let mut found = None;
    for term in terms.values() {
        let Some(dimensions) = term.get("priceDimensions").and_then(|d| d.as_object()) else { continue };
        for d in dimensions.values() {
            if !d.get("unit").and_then(|u| u.as_str()).is_some_and(|u| u.eq_ignore_ascii_case("Hrs")) {
                continue;
            }
            let usd =
                d.pointer("/pricePerUnit/USD").and_then(|u| u.as_str()).ok_or("has an hourly price without USD")?;
            let usd: f64 = usd.parse().map_err(|_| format!("has a price of {usd:?} USD"))?;
            found = Some(found.map_or(usd, |f: f64| f.max(usd)));
        }
    }
    Ok(found)
}

async fn spot(ec2: &aws_sdk_ec2::Client, instance_type: &str) -> Result<Option<f64>, ProviderError> {
    let mut lowest: Option<f64> = None;
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = ec2
            .describe_spot_price_history()
            .instance_types(aws_sdk_ec2::types::InstanceType::from(instance_type))
            .product_descriptions("Linux/UNIX")
            .start_time(aws_sdk_ec2::primitives::DateTime::from(std::time::SystemTime::now()))
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| {
                api_err(
                    &format!("DescribeSpotPriceHistory({instance_type})"),
                    aws_sdk_ec2::error::DisplayErrorContext(e),
                )
            })?;
        for p in page.spot_price_history() {
            let Some(usd) = p.spot_price() else { continue };
            let usd: f64 = usd.parse().map_err(|_| {
                fail(ErrorKind::Protocol, format!("DescribeSpotPriceHistory({instance_type}): a price of {usd:?}"))
            })?;
            if usd > 0.0 {
                lowest = Some(lowest.map_or(usd, |l| l.min(usd)));
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Ok(lowest),
        }
    }
    Ok(lowest)
}
