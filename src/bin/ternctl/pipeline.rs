//! Writing the objects of a file (`create`, `apply`, `replace`, `delete -f`): the
//! requests are pipelined over the one HTTP/2 connection, at most [`IN_FLIGHT`] at a
//! time, and every object gets its own result, reported in input order.
//!
//! ```text
//!   documents ─► steps (in file order) ─► step k: up to IN_FLIGHT requests at once
//!                                          └─ all answered ─► step k+1
//!   results[i] for document i ─► printed in input order
//! ```
//!
//! Each object is still its own request and its own transaction, as with one request
//! after another; only the waiting overlaps. Pipelining must not change the outcome,
//! so a file is cut into steps that run one after the other, and only the objects of
//! one step are in flight together. A new step starts
//! - where the kind changes (a BGPPeer after the Secret its password names, Nodes
//!   after the BGPConfiguration they depend on: file order between kinds is kept);
//! - where a name repeats (the later document of the same object wins, as in order);
//! - at every IPPool: a pool's admission reads the other pools (overlap), so pools go
//!   one at a time, exactly in file order.

use std::future::Future;
use std::ops::Range;

use tokio::task::JoinSet;

/// Requests in flight at once on the connection.
pub const IN_FLIGHT: usize = 64;

/// Kinds whose admission reads other objects of the same kind: one at a time.
const ONE_AT_A_TIME: &[&str] = &["IPPool"];

/// Cut documents, given as (kind, name) in file order, into steps (see the module
/// documentation).
pub fn steps(docs: &[(String, String)]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut names = std::collections::HashSet::new();
    for (i, (kind, name)) in docs.iter().enumerate() {
        let cut = i > start
            && (docs[start].0 != *kind
                || names.contains(name.as_str())
                || ONE_AT_A_TIME.contains(&kind.as_str()));
        if cut {
            out.push(start..i);
            start = i;
            names.clear();
        }
        names.insert(name.as_str());
    }
    if start < docs.len() {
        out.push(start..docs.len());
    }
    out
}

/// Run `request(i)` for every document `i`, step after step, at most [`IN_FLIGHT`] at
/// once within a step; the results are in input order.
pub async fn run<T, F, Fut>(steps: &[Range<usize>], mut request: F) -> Vec<Result<T, tonic::Status>>
where
    T: Send + 'static,
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>> + Send + 'static,
{
    let n = steps.last().map_or(0, |s| s.end);
    let mut results: Vec<Option<Result<T, tonic::Status>>> = (0..n).map(|_| None).collect();
    for step in steps {
        let mut in_flight = JoinSet::new();
        let mut next = step.start;
        while next < step.end || !in_flight.is_empty() {
            while next < step.end && in_flight.len() < IN_FLIGHT {
                let i = next;
                let fut = request(i);
                in_flight.spawn(async move { (i, fut.await) });
                next += 1;
            }
            // A task that failed (it cannot panic, nothing cancels it) leaves its slot
            // empty: its document is then reported as failed, never lost.
            if let Some(Ok((i, r))) = in_flight.join_next().await {
                results[i] = Some(r);
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(tonic::Status::internal("the request did not complete"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn steps_keep_the_order_that_matters() {
        let d = docs(&[
            ("Secret", "s"),
            ("BGPPeer", "a"),
            ("BGPPeer", "b"),
            ("Node", "n1"),
            ("Node", "n2"),
            ("Node", "n1"),
            ("Node", "n3"),
            ("IPPool", "p1"),
            ("IPPool", "p2"),
            ("Node", "n4"),
        ]);
        assert_eq!(steps(&d), vec![0..1, 1..3, 3..5, 5..7, 7..8, 8..9, 9..10],);
        assert!(steps(&[]).is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn results_come_back_in_input_order() {
        let d: Vec<(String, String)> = (0..300)
            .map(|i| ("Node".to_string(), format!("n{i}")))
            .collect();
        let s = steps(&d);
        assert_eq!(s, vec![0..300]);
        // Later documents answer first.
        let out = run(&s, |i| async move {
            tokio::time::sleep(std::time::Duration::from_micros(((300 - i) * 10) as u64)).await;
            if i % 7 == 3 {
                Err(tonic::Status::invalid_argument(format!("bad {i}")))
            } else {
                Ok(i)
            }
        })
        .await;
        for (i, r) in out.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, i),
                Err(e) => assert_eq!(e.message(), format!("bad {i}")),
            }
        }
    }
}
