//! The plugin ABI's messages: the host's decoding of a plugin's answers (any
//! status, any body), the plugin side's decoding of the host's requests and
//! of `create`'s settings (then the local provider made from them). The first
//! byte picks the method; nothing panics, every error names the plugin.

#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mayfly_provider_api::abi::plugin::{decode_request, decode_settings};
use mayfly_provider_api::{
    BootstrapReply, BootstrapRequest, Credential, Host, Level, NodeInfo, Provider, ProviderError, ProviderInfo,
    StoreConfig,
};

const METHODS: [&str; 14] = [
    "launch",
    "list",
    "terminate",
    "identify",
    "terminate_self",
    "credentials",
    "object_store",
    "adapt_event",
    "permissions",
    "deploy",
    "sweep",
    "invoke",
    "serve",
    "no_such_method",
];

struct QuietHost;

#[mayfly_provider_api::async_trait]
impl Host for QuietHost {
    fn log(&self, _level: Level, _message: &str) {}

    async fn bootstrap(&self, _request: BootstrapRequest) -> Result<BootstrapReply, ProviderError> {
        Err(ProviderError::new("host", mayfly_provider_api::ErrorKind::Unsupported, "no bootstrap here"))
    }
}

fn named(e: &ProviderError) {
    assert!(!e.to_string().is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, body)) = data.split_first() else { return };
    let method = METHODS[op as usize % METHODS.len()];
    let status = u32::from(op >> 4) % 4;
    let path = Path::new("/plugins/libmayfly_provider_fuzz.so");
    // The host's side: each answer type it expects.
    let answers = [
        mayfly_data::plugin::decode_answer::<ProviderInfo>("fuzz", path, method, status, body).err(),
        mayfly_data::plugin::decode_answer::<Vec<NodeInfo>>("fuzz", path, method, status, body).err(),
        mayfly_data::plugin::decode_answer::<Option<NodeInfo>>("fuzz", path, method, status, body).err(),
        mayfly_data::plugin::decode_answer::<Credential>("fuzz", path, method, status, body).err(),
        mayfly_data::plugin::decode_answer::<StoreConfig>("fuzz", path, method, status, body).err(),
        mayfly_data::plugin::decode_answer::<BootstrapRequest>("fuzz", path, method, status, body).err(),
        mayfly_data::plugin::decode_answer::<BootstrapReply>("fuzz", path, method, status, body).err(),
        mayfly_data::plugin::decode_answer::<Vec<String>>("fuzz", path, method, status, body).err(),
    ];
    answers.iter().flatten().for_each(named);
    // The plugin's side: the request, and `create`'s settings.
    if let Err(e) = decode_request(method, body) {
        named(&e);
    }
    match decode_settings("local", body) {
        Ok(settings) => match mayfly_provider_local::LocalProvider::create(settings, Arc::new(QuietHost)) {
            Ok(provider) => {
                let _ = provider.info();
            }
            Err(e) => named(&e),
        },
        Err(e) => named(&e),
    }
});
