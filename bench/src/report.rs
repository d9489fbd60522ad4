//! The results: every headline figure next to its same-run reference, the ratio between them and
//! the target it is judged against (reported, never asserted), as JSON and as a Markdown table.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// What a figure is judged against.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "bound", rename_all = "snake_case")]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    /// The figure divided by its reference.
    RatioAtLeast(f64),
    Exactly(f64),
}

impl Target {
    fn met(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::AtLeast(bound) => Some(value >= bound),
            Target::AtMost(bound) => Some(value <= bound),
            Target::RatioAtLeast(bound) => ratio.map(|r| r >= bound),
            Target::Exactly(bound) => Some(value == bound),
        }
    }

    fn describe(self) -> String {
        match self {
            Target::AtLeast(b) => format!(">= {}", number(b)),
            Target::AtMost(b) => format!("<= {}", number(b)),
            Target::RatioAtLeast(b) => format!("ratio >= {b}"),
            Target::Exactly(b) => format!("= {}", number(b)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub name: String,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub reference: Option<Reference>,
    pub ratio: Option<f64>,
    pub target: Option<Target>,
    pub met: Option<bool>,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &str) -> Self {
        Self { name: name.into(), value, unit: unit.into(), reference: None, ratio: None, target: None, met: None }
    }

    /// Sets the reference measured in the same run; the ratio is value / reference.
    pub fn against(mut self, name: impl Into<String>, value: f64) -> Self {
        self.ratio = (value > 0.0).then(|| self.value / value);
        self.reference = Some(Reference { name: name.into(), value });
        self.met = self.target.and_then(|t| t.met(self.value, self.ratio));
        self
    }

    /// Shows a same-run figure beside this one where a ratio would mean nothing (e.g. a
    /// per-connection cost next to the process's whole size).
    pub fn beside(mut self, name: impl Into<String>, value: f64) -> Self {
        self.reference = Some(Reference { name: name.into(), value });
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self.met = target.met(self.value, self.ratio);
        self
    }
}

/// One scenario's results: headline figures, the details behind them, CPU per process.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub id: &'static str,
    pub title: &'static str,
    pub figures: Vec<Figure>,
    pub details: Value,
    pub cpu_seconds: BTreeMap<String, f64>,
    pub wall_secs: f64,
    pub error: Option<String>,
    /// Correctness failures seen while measuring (lost messages, failed requests...).
    pub problems: Vec<String>,
}

fn number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if v < 0.0 { format!("-{grouped}") } else { grouped }
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The Markdown table of every figure, then CPU seconds per process per scenario.
pub fn markdown(scenarios: &[ScenarioReport]) -> String {
    let mut out = String::from(
        "| id | figure | value | reference (same run) | ratio | target | |\n|---|---|---:|---|---:|---|---|\n",
    );
    for s in scenarios {
        if let Some(error) = &s.error {
            out.push_str(&format!("| {} | {} | **failed**: {} | | | | |\n", s.id, s.title, error.replace('|', "/")));
        }
        for f in &s.figures {
            let reference = f.reference.as_ref().map(|r| format!("{} {}", number(r.value), r.name)).unwrap_or_default();
            let ratio = f.ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
            let target = f.target.map(Target::describe).unwrap_or_default();
            let mark = match f.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "",
            };
            // An exact target is shown exactly: 0.99996 must not print as 1.000.
            let value =
                if matches!(f.target, Some(Target::Exactly(_))) { f.value.to_string() } else { number(f.value) };
            out.push_str(&format!(
                "| {} | {} | {} {} | {} | {} | {} | {} |\n",
                s.id, f.name, value, f.unit, reference, ratio, target, mark
            ));
        }
    }
    let problems: Vec<String> =
        scenarios.iter().flat_map(|s| s.problems.iter().map(move |p| format!("- {}: {p}", s.id))).collect();
    if !problems.is_empty() {
        out.push_str("\nProblems:\n\n");
        out.push_str(&problems.join("\n"));
        out.push('\n');
    }
    let mut names: Vec<&String> = scenarios.iter().flat_map(|s| s.cpu_seconds.keys()).collect();
    names.sort();
    names.dedup();
    out.push_str("\nCPU seconds per process (and wall seconds) per scenario:\n\n| id | wall s |");
    for name in &names {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|---:|");
    out.push_str(&"---:|".repeat(names.len()));
    out.push('\n');
    for s in scenarios {
        out.push_str(&format!("| {} | {:.1} |", s.id, s.wall_secs));
        for name in &names {
            let spent = s.cpu_seconds.get(*name).map(|v| format!("{v:.1}")).unwrap_or_default();
            out.push_str(&format!(" {spent} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_targets_use_the_reference() {
        let f = Figure::new("reads", 90.0, "/s").target(Target::RatioAtLeast(0.8)).against("raw", 100.0);
        assert_eq!(f.met, Some(true));
        let f = Figure::new("p99", 30.0, "ms").target(Target::AtMost(25.0));
        assert_eq!(f.met, Some(false));
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(number(123456.7), "123,457");
        assert_eq!(number(12.345), "12.35");
    }
}
