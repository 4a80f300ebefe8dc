//! `cutover serve`: the always-on controller.

use cutover_engine::controller::Happening;

/// Prints what a controller did, one line each.
pub fn report_happening(h: &Happening) {
    match h {
        Happening::Took { id, orphan: true } => {
            outln!("rollout {id}: taken over (its previous driver stopped)")
        }
        Happening::Took { id, orphan: false } => outln!("rollout {id}: driving"),
        Happening::Ended { id, outcome } => outln!("rollout {id}: {outcome}"),
        Happening::Unbuildable { id, error } => {
            eprintln!("rollout {id}: cannot drive it (trying again later): {error}")
        }
    }
}
