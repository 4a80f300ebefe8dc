//! Turning a plan's `[aws]` section into SDK configuration: region and
//! credentials from the plan, else the standard chain (environment,
//! profile, instance or task role); nothing hard-coded.

use aws_config::BehaviorVersion;
pub use aws_config::SdkConfig;
use cutover_core::plan::AwsConfig;

/// Loads the SDK configuration the plan asks for.
pub async fn load(aws: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &aws.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &aws.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let t = &aws.sdk_timeouts;
    loader = loader.timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(t.connect)
            .read_timeout(t.read)
            .operation_attempt_timeout(t.attempt)
            .build(),
    );
    loader.load().await
}

/// Fails clearly when no region could be found anywhere.
pub fn require_region(config: &SdkConfig) -> Result<String, String> {
    config.region().map(|r| r.to_string()).ok_or_else(|| {
        "no AWS region: set `[aws] region` in the plan, AWS_REGION, or a profile's region"
            .to_string()
    })
}

/// `sdk` with the SDK's own retries off: the clients of the routers and
/// checks send one request per attempt, and the one retry policy is
/// cutover's (throttling inside a router call, everything else across
/// calls by the engine), so every request is counted.
pub(crate) fn single_attempt(sdk: &SdkConfig) -> SdkConfig {
    sdk.to_builder()
        .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
        .build()
}
