//! The statistics every benchmark reports: a [`Summary`] (median, min, max of the runs),
//! percentiles, A/B alternation for ratios, the interval a ratio's goal is judged by
//! ([`Interval`]), and the Markdown table BENCHMARKS.md shows.
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

/// A distribution-free 95% confidence interval for the median of paired ratios: the
/// order statistics `x(k)` and `x(n+1-k)` of the `n` ratios, `k` the largest rank with
/// P(Binomial(n, 1/2) < k) <= 2.5% (the sign test's interval: it assumes only that the
/// pairs are independent, not that ratios are normal). Needs 6 pairs at least.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub pairs: usize,
}

/// The confidence of [`Interval`].
pub const CONFIDENCE: &str = "95%";

impl Interval {
    /// The interval of `ratios` (NaNs left out); `None` below 6 values.
    pub fn of(ratios: &[f64]) -> Option<Interval> {
        let mut v: Vec<f64> = ratios.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let k = sign_test_rank(n)?;
        Some(Interval {
            median: Summary::of(&v)?.median,
            low: v[k - 1],
            high: v[n - k],
            pairs: n,
        })
    }

    /// Whether the interval lies on the good side of `goal` (`Met`), the bad side
    /// (`Missed`), or straddles it (`Undecided`: more pairs needed).
    pub fn judge(&self, goal: f64, higher_is_better: bool) -> Goal {
        let (good, bad) = if higher_is_better {
            (self.low >= goal, self.high < goal)
        } else {
            (self.high <= goal, self.low > goal)
        };
        match (good, bad) {
            (true, _) => Goal::Met,
            (_, true) => Goal::Missed,
            _ => Goal::Undecided,
        }
    }

    /// `median [low, high], n pairs`.
    pub fn show(&self, decimals: usize) -> String {
        self.show_in(decimals, "")
    }

    /// `median<unit> [low, high], n pairs`.
    pub fn show_in(&self, decimals: usize, unit: &str) -> String {
        format!(
            "{:.d$}{unit} [{:.d$}, {:.d$}], {} pairs",
            self.median,
            self.low,
            self.high,
            self.pairs,
            d = decimals
        )
    }
}

/// The largest `k` with P(Binomial(n, 1/2) <= k - 1) <= 0.025, or `None` (n < 6).
fn sign_test_rank(n: usize) -> Option<usize> {
    // P(X <= j) for X ~ Binomial(n, 1/2), summed term by term in f64 (n is small).
    let mut term = 0.5f64.powi(n as i32); // P(X = 0)
    let mut cdf = term;
    let mut k = 0;
    for j in 0..n {
        if cdf > 0.025 {
            break;
        }
        k = j + 1; // P(X <= j) <= 2.5%: rank j + 1 bounds the interval.
        term *= (n - j) as f64 / (j + 1) as f64;
        cdf += term;
    }
    (k >= 1).then_some(k)
}

/// Runs A/B pairs ([`alternate`] order) until every goal `decided` judges is decided by its
/// interval, at least `min` pairs and at most `max`.
pub fn alternate_until<A, B>(
    min: usize,
    max: usize,
    mut a: impl FnMut(usize) -> A,
    mut b: impl FnMut(usize) -> B,
    mut decided: impl FnMut(&[A], &[B]) -> bool,
) -> (Vec<A>, Vec<B>) {
    let mut aa = Vec::new();
    let mut bb = Vec::new();
    for i in 0..max {
        aa.push(a(i));
        bb.push(b(i));
        if i + 1 >= min && decided(&aa, &bb) {
            break;
        }
    }
    (aa, bb)
}

/// Whether a figure met its goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    Met,
    Missed,
    /// The interval straddles the goal: this many pairs cannot tell met from missed.
    Undecided,
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
            Goal::Undecided => format!("{goal}: **undecided** (the interval straddles it)"),
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
    fn sign_test_ranks_match_the_tables() {
        // Published ranks of the 95% median interval (e.g. Conover, Practical
        // Nonparametric Statistics, table A3): n = 6 -> 1, 8 -> 1, 9 -> 2, 12 -> 3, 20 -> 6.
        assert_eq!(sign_test_rank(5), None);
        for (n, k) in [(6, 1), (8, 1), (9, 2), (12, 3), (20, 6), (30, 10)] {
            assert_eq!(sign_test_rank(n), Some(k), "n = {n}");
        }
    }

    #[test]
    fn an_interval_decides_only_when_it_clears_the_goal() {
        let v: Vec<f64> = (1..=12).map(|i| 0.95 + 0.01 * f64::from(i)).collect();
        let i = Interval::of(&v).unwrap();
        assert_eq!((i.low, i.high, i.pairs), (v[2], v[9], 12));
        assert_eq!(i.judge(0.97, true), Goal::Met);
        assert_eq!(i.judge(0.99, true), Goal::Undecided);
        assert_eq!(i.judge(1.10, true), Goal::Missed);
        assert_eq!(i.judge(1.10, false), Goal::Met);
        assert!(Interval::of(&v[..5]).is_none());
    }

    #[test]
    fn alternate_until_stops_once_decided() {
        let (a, b) = alternate_until(3, 10, |i| i, |i| i, |a: &[usize], _: &[usize]| a.len() == 4);
        assert_eq!((a.len(), b.len()), (4, 4));
        let (a, _) = alternate_until(3, 5, |i| i, |i| i, |_: &[usize], _: &[usize]| false);
        assert_eq!(a.len(), 5);
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
