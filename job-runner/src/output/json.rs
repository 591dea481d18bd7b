//! `-o json`: the final Job objects, as `kubectl get -o json` prints them.

use crate::report::JobReport;

/// The JSON document for `-o json`: one Job, or a `v1` `List` of them.
pub fn json(reports: &[JobReport]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = reports
        .iter()
        .filter_map(|r| serde_json::to_value(&r.job).ok())
        .collect();
    if items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
    }
}
