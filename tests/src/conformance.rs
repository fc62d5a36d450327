//! A provider under test for the conformance suite, made the way a job's
//! `[provider]` section makes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mayfly_core::provider::{NodeInfo, Provider, ProviderHandle, Selection};
use mayfly_provider_api::BootstrapRequest;
use mayfly_provider_api::conformance::Backend;

/// The setting (key, value) that makes a provider see itself on a node,
/// given the state root.
pub type IdentityOf = Box<dyn Fn(&Path, &NodeInfo) -> (String, String) + Send + Sync>;

/// A provider under test, selected as a job's `[provider]` section would.
pub struct Selected {
    /// The `[provider]` section (with `name` or `path`).
    pub section: serde_json::Map<String, serde_json::Value>,
    /// The state root of the suite's jobs.
    pub root: PathBuf,
    /// How an instance of the provider is made to see itself on a node.
    pub identity: IdentityOf,
}

impl std::fmt::Debug for Selected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selected").field("section", &self.section).field("root", &self.root).finish()
    }
}

impl Selected {
    /// The selection the section makes, with one more setting.
    pub fn selection(&self, extra: Option<(String, String)>) -> Selection {
        let mut s = Selection { name: None, ..Default::default() };
        for (key, value) in &self.section {
            match (key.as_str(), value.as_str()) {
                ("name", Some(v)) => s.name = Some(v.to_owned()),
                ("path", Some(v)) => s.path = Some(PathBuf::from(v)),
                _ => {
                    s.settings.insert(key.clone(), value.clone());
                }
            }
        }
        if let Some((key, value)) = extra {
            s.settings.insert(key, value.into());
        }
        s
    }
}

impl Backend for Selected {
    fn provider(&self) -> Arc<dyn Provider> {
        ProviderHandle::select(&self.selection(None)).unwrap_or_else(|e| panic!("{e}")).provider()
    }

    fn on_node(&self, node: &NodeInfo) -> Arc<dyn Provider> {
        ProviderHandle::select(&self.selection(Some((self.identity)(&self.root, node))))
            .unwrap_or_else(|e| panic!("{e}"))
            .provider()
    }

    fn section(&self) -> serde_json::Map<String, serde_json::Value> {
        self.section.clone()
    }

    fn state_root(&self) -> String {
        self.root.to_string_lossy().into_owned()
    }

    fn idle_node_args(&self) -> Vec<String> {
        vec!["idle".into(), "--for".into(), "5m".into()]
    }

    fn event(&self, request: &BootstrapRequest) -> serde_json::Value {
        serde_json::json!({ "job": request.job, "base_dir": request.base_dir, "overrides": request.overrides })
    }
}
