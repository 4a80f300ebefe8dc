//! Builds the adapters a plan names.

use std::sync::Arc;

use cutover_core::plan::{Plan, RouterConfig};
use cutover_engine::ports::Check;
use cutover_engine::Adapters;

use crate::Exit;

pub fn build(plan: &Plan) -> Result<Adapters, Exit> {
    match &plan.router {
        RouterConfig::Local(local) => {
            let mut checks: Vec<Arc<dyn Check>> = Vec::new();
            for spec in &plan.analysis.checks {
                let check = cutover_local::build_check(spec, Some(local)).ok_or_else(|| {
                    Exit::Usage(format!(
                        "check `{}` (`{}`) reads AWS; with router `local` use: {}",
                        spec.name,
                        spec.config.kind(),
                        cutover_core::plan::LOCAL_CHECKS.join(", ")
                    ))
                })?;
                checks.push(check);
            }
            Ok(Adapters {
                router: Arc::new(cutover_local::LocalRouter::new(local)),
                checks,
                platform: None,
            })
        }
        other => Err(Exit::Usage(format!(
            "router `{}` is not available in this build",
            other.kind()
        ))),
    }
}
