//! Credentials: `azure_identity` (the maintained 1.x line) picks the source
//! (a managed identity on nodes and in the function; for an operator, a
//! service principal's secret, workload identity, or the Azure CLI), and a
//! bridge hands its tokens to the legacy `azure_core` 0.21 trait that
//! `azure_mgmt_compute` expects. Tokens never leave the process but as a
//! data-path credential core refreshes ahead of expiry; they are never logged
//! (`Debug` shows none).

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    ClientSecretCredential, DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential,
};
use mayfly_provider_api::{ErrorKind, ProviderError};

use crate::fail;

/// Where the provider's own tokens come from (`credential` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A managed identity: `IDENTITY_ENDPOINT` (Functions, App Service) or the
    /// VM's instance metadata service.
    ManagedIdentity,
    /// A service principal: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`.
    ClientSecret,
    /// Workload identity: `AZURE_FEDERATED_TOKEN_FILE` (and tenant and client ids).
    WorkloadIdentity,
    /// The Azure CLI's (or azd's) signed-in account.
    Developer,
}

impl Source {
    /// The setting's value: `managed_identity`, `client_secret`,
    /// `workload_identity`, `developer`, or `auto` (a managed identity where
    /// one is offered, a service principal or workload identity when the
    /// environment names one, else the developer's tools).
    pub fn parse(setting: Option<&str>, on_node: bool) -> Result<Source, ProviderError> {
        let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        Ok(match setting.unwrap_or("auto") {
            "managed_identity" => Source::ManagedIdentity,
            "client_secret" => Source::ClientSecret,
            "workload_identity" => Source::WorkloadIdentity,
            "developer" => Source::Developer,
            "auto" if env("IDENTITY_ENDPOINT") || on_node => Source::ManagedIdentity,
            "auto" if env("AZURE_FEDERATED_TOKEN_FILE") => Source::WorkloadIdentity,
            "auto" if env("AZURE_CLIENT_SECRET") => Source::ClientSecret,
            "auto" => Source::Developer,
            other => {
                return Err(fail(
                    ErrorKind::Config,
                    format!(
                        "`provider.credential` {other:?}: expected managed_identity, client_secret, workload_identity, developer or auto"
                    ),
                ));
            }
        })
    }
}

/// Makes the credential of `source`; `client_id` picks a user-assigned managed identity.
pub fn credential(source: Source, client_id: Option<&str>) -> Result<Arc<dyn TokenCredential>, ProviderError> {
    let err = |what: &str, e: azure_core::Error| fail(ErrorKind::Config, format!("{what}: {e}"));
    Ok(match source {
        Source::ManagedIdentity => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.map(|c| UserAssignedId::ClientId(c.to_owned())),
                ..Default::default()
            };
            ManagedIdentityCredential::new(Some(options)).map_err(|e| err("the managed identity", e))?
        }
        Source::ClientSecret => {
            let var = |k: &str| {
                std::env::var(k).map_err(|_| {
                    fail(ErrorKind::Config, format!("`credential = \"client_secret\"` needs {k} in the environment"))
                })
            };
            let (tenant, client, secret) =
                (var("AZURE_TENANT_ID")?, var("AZURE_CLIENT_ID")?, var("AZURE_CLIENT_SECRET")?);
            ClientSecretCredential::new(&tenant, client, secret.into(), None)
                .map_err(|e| err("the service principal", e))?
        }
        Source::WorkloadIdentity => WorkloadIdentityCredential::new(None).map_err(|e| err("workload identity", e))?,
        Source::Developer => DeveloperToolsCredential::new(None).map_err(|e| err("the Azure CLI", e))?,
    })
}

/// A token for `scope` and when it expires (ms since the epoch).
pub async fn token(credential: &dyn TokenCredential, scope: &str) -> Result<(String, u64), ProviderError> {
    let t = credential
        .get_token(&[scope], None)
        .await
        .map_err(|e| fail(ErrorKind::Unavailable, format!("a token for {scope}: {}", chain(&e))))?;
    let expires = (t.expires_on.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    Ok((t.token.secret().to_owned(), expires))
}

/// An error with its causes, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The maintained credential, seen through the legacy trait.
pub struct Bridge(pub Arc<dyn TokenCredential>);

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bridge(..)")
    }
}

#[async_trait::async_trait]
impl azure_core_legacy::auth::TokenCredential for Bridge {
    async fn get_token(&self, scopes: &[&str]) -> azure_core_legacy::Result<azure_core_legacy::auth::AccessToken> {
        let t = self.0.get_token(scopes, None).await.map_err(|e| {
            azure_core_legacy::Error::message(azure_core_legacy::error::ErrorKind::Credential, chain(&e))
        })?;
        let expires_on = time::OffsetDateTime::from_unix_timestamp(t.expires_on.unix_timestamp())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        Ok(azure_core_legacy::auth::AccessToken::new(t.token.secret().to_owned(), expires_on))
    }

    async fn clear_cache(&self) -> azure_core_legacy::Result<()> {
        Ok(())
    }
}
