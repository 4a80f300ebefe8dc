//! Builds the adapters a plan names.

use std::sync::Arc;

use cutover_core::plan::{Plan, RouterConfig};
use cutover_engine::ports::Check;
use cutover_engine::Adapters;

pub fn build(plan: &Plan) -> Adapters {
    match &plan.router {
        RouterConfig::Local(local) => {
            let checks: Vec<Arc<dyn Check>> = plan
                .analysis
                .checks
                .iter()
                .map(|spec| cutover_local::build_check(spec, local))
                .collect();
            Adapters {
                router: Arc::new(cutover_local::LocalRouter::new(local)),
                checks,
                platform: None,
            }
        }
    }
}
