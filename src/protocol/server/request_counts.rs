//! Requests answered, counted by verb and result in a fixed table of
//! atomics: counting one is an index and an atomic add, with no lock and
//! no lookup, so it costs next to nothing whether metrics are served or
//! not. At scrape time the non-zero counts become the `requests` counter
//! family, labelled `verb` and `result`.
//!
//! The table's rows and columns come from the types: the verbs from an
//! exhaustive match on [`Request`], the results from [`Answer`] and every
//! [`ErrorCode`], so a new verb or code cannot be left uncounted.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::protocol::{ErrorCode, Request};

/// How a request ended, as counted and logged: the code of its reply, or
/// how its body broke off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `OK`.
    Ok,
    /// `ERR <code>`.
    Err(ErrorCode),
    /// A body sent short: the file shrank while being sent.
    Cut,
    /// A body (or a hash) cut at the end of the shutdown grace period.
    CutByShutdown,
    /// The client left in the middle of an upload's body.
    Gone,
    /// A body the client stopped reading.
    Stalled,
}

/// The results that are not an error code, in the table's order.
const NOT_ERRORS: [Answer; 5] = [
    Answer::Ok,
    Answer::Cut,
    Answer::CutByShutdown,
    Answer::Gone,
    Answer::Stalled,
];

/// Columns of the table: one per result.
const RESULTS: usize = NOT_ERRORS.len() + ErrorCode::ALL.len();

// An error code's column is found by its discriminant, which is its place
// in `ErrorCode::ALL` (checked here, at compile time).
const _: () = {
    let mut i = 0;
    while i < ErrorCode::ALL.len() {
        assert!(ErrorCode::ALL[i] as usize == i);
        i += 1;
    }
};

impl Answer {
    /// The label value, as in the log: `OK`, the error code, or `cut`,
    /// `cut-by-shutdown`, `gone`, `stalled`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Answer::Ok => "OK",
            Answer::Err(code) => code.as_str(),
            Answer::Cut => "cut",
            Answer::CutByShutdown => "cut-by-shutdown",
            Answer::Gone => "gone",
            Answer::Stalled => "stalled",
        }
    }

    /// The column: the place of `self` in [`Answer::all`].
    const fn index(self) -> usize {
        match self {
            Answer::Ok => 0,
            Answer::Cut => 1,
            Answer::CutByShutdown => 2,
            Answer::Gone => 3,
            Answer::Stalled => 4,
            Answer::Err(code) => NOT_ERRORS.len() + code as usize,
        }
    }

    /// Every result, in column order.
    fn all() -> impl Iterator<Item = Answer> {
        NOT_ERRORS
            .into_iter()
            .chain(ErrorCode::ALL.into_iter().map(Answer::Err))
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rows of the table: each verb's label, and `invalid` for a line that
/// did not parse, in row order.
const VERBS: [&str; 7] = ["GET", "PUT", "LIST", "STAT", "SUM", "QUIT", "invalid"];

/// A request's verb as counted and logged; `invalid` for `None` (a line
/// that did not parse).
pub(crate) const fn verb_label(request: Option<&Request>) -> &'static str {
    VERBS[verb_index(request)]
}

/// The row of a request (`None`: a line that did not parse).
const fn verb_index(request: Option<&Request>) -> usize {
    match request {
        Some(Request::Get { .. }) => 0,
        Some(Request::Put { .. }) => 1,
        Some(Request::List { .. }) => 2,
        Some(Request::Stat { .. }) => 3,
        Some(Request::Sum { .. }) => 4,
        Some(Request::Quit) => 5,
        None => 6,
    }
}

/// Requests answered, by verb and result.
#[derive(Debug)]
pub(crate) struct RequestCounts {
    table: [[AtomicU64; RESULTS]; VERBS.len()],
}

impl Default for RequestCounts {
    fn default() -> RequestCounts {
        RequestCounts {
            table: [const { [const { AtomicU64::new(0) }; RESULTS] }; VERBS.len()],
        }
    }
}

impl RequestCounts {
    /// Counts one request (`None`: a line that did not parse).
    pub(crate) fn count(&self, request: Option<&Request>, answer: Answer) {
        self.table[verb_index(request)][answer.index()].fetch_add(1, Relaxed);
    }

    /// The non-zero counts now, as a metric to register.
    pub(crate) fn snapshot(&self) -> RequestFamily {
        let mut series = Vec::new();
        for (verb, row) in VERBS.into_iter().zip(&self.table) {
            for answer in Answer::all() {
                let count = row[answer.index()].load(Relaxed);
                if count > 0 {
                    series.push((verb, answer.as_str(), count));
                }
            }
        }
        RequestFamily { series }
    }
}

/// The `requests` counter family at one scrape: a series per (verb,
/// result) counted at least once, as a `prometheus_client` family with
/// `verb` and `result` labels shows them; with none, nothing at all.
#[derive(Debug)]
pub(crate) struct RequestFamily {
    series: Vec<(&'static str, &'static str, u64)>,
}

impl EncodeMetric for RequestFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for &(verb, result, count) in &self.series {
            let labels = [("verb", verb), ("result", result)];
            ConstCounter::new(count).encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }

    fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::protocol::RelPath;

    /// One request of every verb.
    fn every_verb() -> Vec<Request> {
        let path = RelPath::root();
        vec![
            Request::Get {
                path: path.clone(),
                offset: None,
            },
            Request::Put {
                path: path.clone(),
                size: 1,
            },
            Request::List { path: path.clone() },
            Request::Stat { path: path.clone() },
            Request::Sum { path, length: None },
            Request::Quit,
        ]
    }

    #[test]
    fn rows_are_named_as_the_requests_name_their_verbs() {
        let requests = every_verb();
        let mut rows: Vec<usize> = requests.iter().map(|r| verb_index(Some(r))).collect();
        for (request, &row) in requests.iter().zip(&rows) {
            assert_eq!(VERBS[row], request.verb());
        }
        rows.push(verb_index(None));
        assert_eq!(VERBS[verb_index(None)], "invalid");
        rows.sort_unstable();
        assert_eq!(rows, (0..VERBS.len()).collect::<Vec<_>>(), "one row each");
    }

    #[test]
    fn every_result_has_its_own_column_and_label() {
        let answers: Vec<Answer> = Answer::all().collect();
        assert_eq!(answers.len(), RESULTS);
        for (column, answer) in answers.iter().enumerate() {
            assert_eq!(answer.index(), column, "{answer:?}");
        }
        for code in ErrorCode::ALL {
            assert_eq!(Answer::Err(code).as_str(), code.as_str());
        }
        let mut labels: Vec<&str> = answers.iter().map(|a| a.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RESULTS, "labels are distinct");
    }

    /// What the server encoded before the table: a family keyed by labels.
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        verb: &'static str,
        result: &'static str,
    }

    fn encode(metric: impl prometheus_client::registry::Metric) -> Vec<String> {
        let mut registry = Registry::with_prefix("filesrv");
        registry.register("requests", "Requests answered", metric);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        // A family's series come in its hash map's order.
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    #[test]
    fn the_scrape_shows_what_a_labelled_family_showed() {
        let counts = RequestCounts::default();
        let family = Family::<Labels, Counter>::default();
        assert_eq!(encode(counts.snapshot()), encode(family.clone()));
        let requests = every_verb();
        let mut n = 0;
        for request in requests.iter().map(Some).chain([None]) {
            for answer in Answer::all() {
                // A few pairs, counted a varying number of times.
                n += 1;
                for _ in 0..(n % 4) {
                    counts.count(request, answer);
                    let verb = request.map_or("invalid", Request::verb);
                    let labels = Labels {
                        verb,
                        result: answer.as_str(),
                    };
                    family.get_or_create(&labels).inc();
                }
            }
        }
        let text = encode(counts.snapshot());
        assert!(
            text.contains(
                &r#"filesrv_requests_total{verb="GET",result="cut-by-shutdown"} 3"#.into()
            ),
            "{text:?}"
        );
        assert_eq!(text, encode(family));
    }
}
