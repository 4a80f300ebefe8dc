//! Builds the adapters a plan names.

use std::sync::Arc;

use cutover_core::plan::{Plan, PlatformConfig, Release, RouterConfig};
use cutover_engine::ports::{Check, Platform, Router};
use cutover_engine::Adapters;

use crate::Exit;

/// The plan's router; `sdk` is loaded by the caller whenever the router is
/// an AWS one.
fn build_router(plan: &Plan, sdk: Option<&cutover_aws::config::SdkConfig>) -> Arc<dyn Router> {
    match (&plan.router, sdk) {
        (RouterConfig::Local(l), _) => Arc::new(cutover_local::LocalRouter::new(l)),
        (RouterConfig::Route53(r), Some(sdk)) => {
            Arc::new(cutover_aws::route53::Route53Router::new(r, sdk))
        }
        (RouterConfig::Alb(a), Some(sdk)) => Arc::new(cutover_aws::alb::AlbRouter::new(a, sdk)),
        (_, None) => unreachable!("callers load the SDK configuration for AWS routers"),
    }
}

async fn sdk(plan: &Plan) -> Result<cutover_aws::config::SdkConfig, Exit> {
    let sdk = cutover_aws::config::load(&plan.aws).await;
    cutover_aws::config::require_region(&sdk).map_err(Exit::Usage)?;
    Ok(sdk)
}

pub async fn build(plan: &Plan) -> Result<Adapters, Exit> {
    let local = match &plan.router {
        RouterConfig::Local(l) => Some(l),
        _ => None,
    };
    let needs_aws = local.is_none()
        || plan.platform.is_some()
        || plan.analysis.checks.iter().any(|c| c.config.reads_aws());
    let sdk = if needs_aws {
        Some(sdk(plan).await?)
    } else {
        None
    };
    let router = build_router(plan, sdk.as_ref());

    let mut checks: Vec<Arc<dyn Check>> = Vec::new();
    for spec in &plan.analysis.checks {
        let check = cutover_local::build_check(spec, local)
            .or_else(|| {
                sdk.as_ref()
                    .and_then(|sdk| cutover_aws::checks::build_check(spec, sdk))
            })
            .ok_or_else(|| {
                Exit::Usage(format!(
                    "check `{}` (`{}`) reads the embedded proxy and needs router `local`",
                    spec.name,
                    spec.config.kind()
                ))
            })?;
        checks.push(check);
    }

    // The platform acts only when a release was asked for; otherwise the
    // plan just moves traffic between what is already running.
    let platform: Option<Arc<dyn Platform>> = match (&plan.platform, &plan.release, &sdk) {
        (Some(PlatformConfig::Ecs(ecs)), Some(release), Some(sdk)) => {
            let version = match release {
                Release::Image(i) => cutover_aws::ecs::NewVersion::Image(i.clone()),
                Release::TaskDefinition(t) => {
                    cutover_aws::ecs::NewVersion::TaskDefinition(t.clone())
                }
            };
            Some(Arc::new(cutover_aws::ecs::EcsPlatform::new(
                ecs, sdk, version,
            )))
        }
        _ => None,
    };
    Ok(Adapters {
        router,
        checks,
        platform,
    })
}

/// Builds each rollout's adapters from the plan it carries: what a
/// controller (`watch`, `serve`) drives rollouts with.
pub struct PlanAdapters;

#[async_trait::async_trait]
impl cutover_engine::AdapterFactory for PlanAdapters {
    async fn adapters(&self, rollout: &cutover_core::Rollout) -> Result<Adapters, String> {
        build(&rollout.plan).await.map_err(|e| e.message())
    }
}
