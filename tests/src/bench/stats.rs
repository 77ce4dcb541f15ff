//! The statistics every benchmark reports: a [`Summary`] (median, min, max of the runs),
//! percentiles, A/B alternation for ratios, and the Markdown table BENCHMARKS.md shows.
//!
//! No side effects: plain arithmetic and string formatting.

use std::fmt::Write;

/// Median, minimum and maximum of a series of runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Summary {
    /// The summary of `runs` (NaNs are left out). `None` when nothing is left.
    pub fn of(runs: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = runs.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            runs: n,
        })
    }

    /// `median (min–max)` with `decimals` digits after the point.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// `median (min–max)` of `runs` in thousands: `163k (56k–203k)`.
pub fn kilo(runs: &[f64]) -> String {
    let s = Summary::of(runs).expect("at least one run");
    format!(
        "{:.0}k ({:.0}k–{:.0}k)",
        s.median / 1e3,
        s.min / 1e3,
        s.max / 1e3
    )
}

/// The `p`-th percentile (0–100) of `values`, nearest rank. `NaN` for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Runs `a` then `b`, `pairs` times (A B A B ...), so slow drifts of a shared machine hit
/// both sides alike. Returns every A result and every B result, and the ratio B/A of each
/// pair (`ratio` maps a pair's results to the figure to divide).
pub fn alternate<A, B>(
    pairs: usize,
    mut a: impl FnMut(usize) -> A,
    mut b: impl FnMut(usize) -> B,
) -> (Vec<A>, Vec<B>) {
    let mut aa = Vec::with_capacity(pairs);
    let mut bb = Vec::with_capacity(pairs);
    for i in 0..pairs {
        aa.push(a(i));
        bb.push(b(i));
    }
    (aa, bb)
}

/// The ratio of each pair, `b[i] / a[i]`.
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| b / a).collect()
}

/// Whether a figure met its goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    Met,
    Missed,
    /// No goal for this figure, or it could not be measured.
    None,
}

impl Goal {
    /// `Met` when `ok`.
    pub fn check(ok: bool) -> Goal {
        if ok { Goal::Met } else { Goal::Missed }
    }

    fn cell(self, goal: &str) -> String {
        match self {
            Goal::Met => format!("{goal}: met"),
            Goal::Missed => format!("{goal}: **missed**"),
            Goal::None if goal.is_empty() => String::new(),
            Goal::None => goal.to_owned(),
        }
    }
}

/// A Markdown table whose last column is the goal and whether it was met.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with `columns` (the "goal" column is added at the end).
    pub fn new(columns: &[&str]) -> Table {
        let mut header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        header.push("goal".into());
        Table {
            header,
            rows: Vec::new(),
        }
    }

    /// One row: `cells` (as many as the columns), the goal's text and whether it was met.
    pub fn row(&mut self, cells: &[String], goal: &str, met: Goal) -> &mut Table {
        assert_eq!(cells.len() + 1, self.header.len(), "cells of {cells:?}");
        let mut row: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
        row.push(met.cell(goal));
        self.rows.push(row);
        self
    }

    /// Whether any row missed its goal.
    pub fn any_missed(&self) -> bool {
        self.rows
            .iter()
            .any(|r| r.last().is_some_and(|c| c.ends_with("**missed**")))
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let line = |s: &mut String, cells: &[String]| {
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        };
        line(&mut s, &self.header);
        line(&mut s, &vec!["---".to_string(); self.header.len()]);
        for r in &self.rows {
            line(&mut s, r);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_runs() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (3.0, 1.0, 5.0, 3));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn summary_skips_nan_and_refuses_nothing() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        assert_eq!(Summary::of(&[f64::NAN, 7.0]).unwrap().median, 7.0);
    }

    #[test]
    fn summary_shows_median_then_range() {
        let s = Summary::of(&[0.951, 0.9, 1.0]).unwrap();
        assert_eq!(s.show(2), "0.95 (0.90–1.00)");
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 99.0), 3.0);
        assert_eq!(percentile(&[3.0], 0.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn alternate_runs_a_then_b_in_turn() {
        let order = std::cell::RefCell::new(String::new());
        let (a, b) = alternate(
            3,
            |i| {
                order.borrow_mut().push('A');
                i
            },
            |i| {
                order.borrow_mut().push('B');
                i * 10
            },
        );
        assert_eq!(order.into_inner(), "ABABAB");
        assert_eq!((a, b), (vec![0, 1, 2], vec![0, 10, 20]));
    }

    #[test]
    fn ratios_pair_by_pair() {
        assert_eq!(ratios(&[2.0, 4.0], &[1.0, 4.0]), vec![0.5, 1.0]);
    }

    #[test]
    fn table_renders_goal_column_and_escapes_pipes() {
        let mut t = Table::new(&["what", "figure"]);
        t.row(&["a|b".into(), "1".into()], ">= 1", Goal::Met)
            .row(&["c".into(), "0".into()], ">= 1", Goal::Missed)
            .row(&["d".into(), "2".into()], "", Goal::None);
        assert_eq!(
            t.markdown(),
            "| what | figure | goal |\n| --- | --- | --- |\n| a\\|b | 1 | >= 1: met |\n\
             | c | 0 | >= 1: **missed** |\n| d | 2 |  |\n"
        );
        assert!(t.any_missed());
    }
}
