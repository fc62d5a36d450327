//! A task that does nothing: measures the host's cost per item.

#[mayfly_sdk::task]
fn empty() -> mayfly_sdk::Result<()> {
    Ok(())
}
