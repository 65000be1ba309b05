//! The nodes of one RabbitMQ cluster, and the order the link tries them in.
//!
//! Invariants: a [`BrokerNodes`] holds at least one URL and no blank one (the only way to make
//! one is to parse it); [`rotation`] visits every node once per round, the failed node last,
//! the others starting at one that depends on the process, so the processes that lost a node
//! spread over the survivors instead of all moving to the same one.

use std::fmt;
use std::str::FromStr;

use pdq_protocol::redact_url;

/// AMQP URLs of the nodes of one RabbitMQ cluster, in the order a first connection tries them.
/// Parsed from one URL, or several separated by commas (`PDQ_AMQP_URL`); spaces around an entry
/// are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerNodes(Vec<String>);

/// A broker URL list with nothing to connect to in it: the user's input to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeListError {
    #[error("the broker URL list is empty; give one AMQP URL, or several comma-separated")]
    Empty,
    #[error(
        "the broker URL list '{input}' has an empty entry (number {entry} of {of}); separate URLs with single commas"
    )]
    EmptyEntry { input: String, entry: usize, of: usize },
}

impl FromStr for BrokerNodes {
    type Err = NodeListError;

    fn from_str(input: &str) -> Result<BrokerNodes, NodeListError> {
        if input.trim().is_empty() {
            return Err(NodeListError::Empty);
        }
        let entries: Vec<&str> = input.split(',').map(str::trim).collect();
        if let Some(blank) = entries.iter().position(|e| e.is_empty()) {
            // The input may carry passwords; the error shows it redacted, entry by entry.
            let shown: Vec<String> = entries.iter().map(|e| redact_url(e)).collect();
            return Err(NodeListError::EmptyEntry { input: shown.join(","), entry: blank + 1, of: entries.len() });
        }
        Ok(BrokerNodes(entries.into_iter().map(str::to_string).collect()))
    }
}

impl BrokerNodes {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true; here because clippy expects it beside `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Node `i`'s URL, as given (with its password).
    pub fn url(&self, i: usize) -> &str {
        &self.0[i % self.0.len()]
    }

    /// Node `i`'s URL with the password masked, for logs and errors.
    pub fn redacted(&self, i: usize) -> String {
        redact_url(self.url(i))
    }

    /// Every node, masked, comma-separated.
    pub fn redacted_all(&self) -> String {
        (0..self.len()).map(|i| self.redacted(i)).collect::<Vec<_>>().join(", ")
    }
}

/// The list as it was given (passwords included), so it can be passed on as text.
impl fmt::Display for BrokerNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// The nodes to try, endlessly, one round of `n` at a time. A first connection (`failed`
/// `None`) tries them in the order given. After node `failed` failed, a round takes the other
/// nodes in order, starting `spread` places after it (a number fixed per process, e.g. a hash
/// of its connection name), then the failed node last.
pub(crate) fn rotation(n: usize, failed: Option<usize>, spread: u64) -> impl Iterator<Item = usize> {
    let round: Vec<usize> = match failed {
        None => (0..n).collect(),
        Some(f) => {
            let others = n - 1;
            let offset = if others == 0 { 0 } else { (spread % others as u64) as usize };
            (0..others).map(|i| (f + 1 + (i + offset) % others) % n).chain([f % n]).collect()
        }
    };
    round.into_iter().cycle()
}

/// A process's `spread` for [`rotation`]: FNV-1a of its connection name, stable across runs.
pub(crate) fn spread_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<String>, NodeListError> {
        s.parse::<BrokerNodes>().map(|n| n.0)
    }

    #[test]
    fn one_url_or_a_comma_list_parses_and_blanks_are_named() {
        assert_eq!(parse("amqp://h/%2f").unwrap(), ["amqp://h/%2f"]);
        assert_eq!(
            parse("amqp://a/%2f, amqp://b/%2f ,amqp://c/%2f").unwrap(),
            ["amqp://a/%2f", "amqp://b/%2f", "amqp://c/%2f"]
        );
        assert_eq!(parse(""), Err(NodeListError::Empty));
        assert_eq!(parse("  "), Err(NodeListError::Empty));
        let e = parse("amqp://u:secret@a/%2f,,amqp://b/%2f").unwrap_err();
        assert_eq!(e, NodeListError::EmptyEntry { input: "amqp://u:***@a/%2f,,amqp://b/%2f".into(), entry: 2, of: 3 });
        assert!(e.to_string().contains("number 2 of 3"), "{e}");
        assert!(matches!(parse("amqp://a/%2f,"), Err(NodeListError::EmptyEntry { entry: 2, of: 2, .. })));
    }

    #[test]
    fn the_list_prints_as_given_and_masks_passwords_when_asked() {
        let n: BrokerNodes = "amqp://u:pw@a/%2f,amqp://b/%2f".parse().unwrap();
        assert_eq!(n.to_string(), "amqp://u:pw@a/%2f,amqp://b/%2f");
        assert_eq!(n.redacted_all(), "amqp://u:***@a/%2f, amqp://b/%2f");
        assert_eq!(n.url(3), "amqp://b/%2f", "indices wrap around the list");
    }

    #[test]
    fn a_first_connection_tries_the_nodes_in_order() {
        assert_eq!(rotation(3, None, 7).take(3).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn a_reconnect_starts_after_the_failed_node_and_tries_it_last() {
        assert_eq!(rotation(3, Some(0), 0).take(6).collect::<Vec<_>>(), [1, 2, 0, 1, 2, 0]);
        assert_eq!(rotation(3, Some(0), 1).take(6).collect::<Vec<_>>(), [2, 1, 0, 2, 1, 0]);
        assert_eq!(rotation(3, Some(2), 0).take(3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotation(3, Some(2), 3).take(3).collect::<Vec<_>>(), [1, 0, 2]);
        assert_eq!(rotation(1, Some(0), 5).take(2).collect::<Vec<_>>(), [0, 0], "one node: always that one");
    }

    #[test]
    fn processes_that_lost_a_node_spread_over_the_others() {
        // The ranks of a 4x4 cluster, as they name their connections.
        let firsts: std::collections::BTreeSet<usize> = ["prefill", "decode"]
            .iter()
            .flat_map(|role| (0..4).map(move |r| format!("pdq:ns:{role}-{r}")))
            .map(|name| rotation(3, Some(0), spread_of(&name)).next().unwrap())
            .collect();
        assert_eq!(firsts, [1, 2].into(), "both surviving nodes take some of the eight");
    }
}
