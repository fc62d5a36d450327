//! Small pieces of text the commands share.

/// Failed shards, quarantined items: how many a summary names (the rest are counted).
pub(crate) const SHOWN: usize = 10;

/// At most [`SHOWN`] names, then how many more.
pub(crate) fn some_of(names: &[String]) -> String {
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// `n item(s)`.
pub(crate) fn items(n: usize) -> String {
    format!("{n} item{}", if n == 1 { "" } else { "s" })
}
