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
    /// The plan's colours are swapped: the proxy's blue pool is the
    /// candidate, so a split for the candidate is the proxy's blue share.
    swapped: bool,
    /// The client, or why the settings cannot make one (malformed URL or
    /// token): then every call fails permanently with that reason.
    client: Result<AdminClient, AdapterError>,
}

impl LocalRouter {
    /// A router for a plan's `local` router settings. Its calls are not
    /// cut short by the client: the engine bounds each one by the plan's
    /// `[timeouts]` (at most an hour), which a shorter client limit would
    /// silently override.
    pub fn new(config: &cutover_core::plan::LocalRouter) -> LocalRouter {
        LocalRouter {
            url: config.admin_url.clone(),
            swapped: config.swapped,
            client: AdminClient::from_config(config)
                .map(|c| c.with_timeout(cutover_core::plan::Timeouts::MAX)),
        }
    }

    /// A router over an existing client.
    pub fn from_client(client: AdminClient) -> LocalRouter {
        LocalRouter {
            url: client.base_url().to_string(),
            swapped: false,
            client: Ok(client),
        }
    }

    /// The admin client, or why the settings cannot make one.
    pub fn client(&self) -> Result<&AdminClient, AdapterError> {
        self.client.as_ref().map_err(Clone::clone)
    }
}

impl LocalRouter {
    /// The candidate's share from the proxy's green share, and back.
    fn flip(&self, split: Split) -> Split {
        if self.swapped {
            Split::from_basis_points(split.blue_basis_points()).expect("0..=10000")
        } else {
            split
        }
    }
}

#[async_trait]
impl Router for LocalRouter {
    fn describe(&self) -> String {
        if self.swapped {
            format!("local proxy at {} (candidate: its blue pool)", self.url)
        } else {
            format!("local proxy at {}", self.url)
        }
    }

    async fn apply(&self, split: Split) -> Result<Split, AdapterError> {
        let set = self.client()?.set_split(self.flip(split)).await?;
        Ok(self.flip(set))
    }

    async fn current(&self) -> Result<Split, AdapterError> {
        Ok(self.flip(self.client()?.split().await?))
    }
}
