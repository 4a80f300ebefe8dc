//! [`LocalRouter`]: the engine's `Router` for the embedded proxy.

use async_trait::async_trait;
use cutover_core::Split;
use cutover_engine::ports::{AdapterError, Router};

use crate::client::AdminClient;

/// Applies splits through the proxy's admin API (`PUT /split`, `GET /split`).
///
/// Errors: proxy unreachable, timed out or answering 5xx is transient;
/// 4xx (e.g. a wrong token) is permanent.
#[derive(Clone, Debug)]
pub struct LocalRouter {
    url: String,
    /// The client, or why the settings cannot make one (malformed URL or
    /// token): then every call fails permanently with that reason.
    client: Result<AdminClient, AdapterError>,
}

impl LocalRouter {
    /// A router for a plan's `local` router settings.
    pub fn new(config: &cutover_core::plan::LocalRouter) -> LocalRouter {
        LocalRouter {
            url: config.admin_url.clone(),
            client: AdminClient::from_config(config),
        }
    }

    /// A router over an existing client.
    pub fn from_client(client: AdminClient) -> LocalRouter {
        LocalRouter {
            url: client.base_url().to_string(),
            client: Ok(client),
        }
    }

    /// The admin client, or why the settings cannot make one.
    pub fn client(&self) -> Result<&AdminClient, AdapterError> {
        self.client.as_ref().map_err(Clone::clone)
    }
}

#[async_trait]
impl Router for LocalRouter {
    fn describe(&self) -> String {
        format!("local proxy at {}", self.url)
    }

    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        self.client()?.set_split(split).await
    }

    async fn current(&self) -> Result<Split, AdapterError> {
        self.client()?.split().await
    }
}
