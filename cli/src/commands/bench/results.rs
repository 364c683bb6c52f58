//! What a sweep found: the runs `bench sweep` writes (`--json`) and `bench plot` draws.

use serde::{Deserialize, Serialize};

use super::Latency;
use super::breakdown::StageFigure;

/// One sweep: what `--json` writes and `bench plot` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SweepRun {
    pub label: String,
    pub workload: String,
    /// The unthrottled step's rate, when the steps were found from it.
    pub max_rate: Option<f64>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Step {
    /// records/s asked for; none for the unthrottled step.
    pub target_rate: Option<f64>,
    /// Records acknowledged in the measured window, per second.
    pub achieved_rate: f64,
    pub mb_per_second: f64,
    /// Records sent in the window and acknowledged (the latency sample).
    pub records: u64,
    pub failed: u64,
    /// Records the schedule wanted and the sender had no time for (it fell behind).
    pub not_sent: u64,
    pub latency_ms: Latency,
    /// Where a write's time went on the brokers, during the window (with --breakdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Vec<StageFigure>>,
}
